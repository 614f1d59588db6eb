"""What every `stepflow` command shares: the consoles, exit codes, and reading arguments."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from typing import Any

from rich.console import Console

from stepflow.workflows.durations import parse_duration
from stepflow.workflows.models import PipelineSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_PIPED_WIDTH = 10_000


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal:
        # Piped or redirected, output is for other programs and for copying: never cut it at
        # the 80 columns rich assumes without a terminal.
        console.width = _PIPED_WIDTH
    return console


out = _console(stderr=False)
err = _console(stderr=True)


class UsageError(Exception):
    """Bad arguments: one line on stderr, exit code 2."""


def add_input_option(parser: argparse.ArgumentParser, help: str) -> None:
    """`--input NAME=VALUE`, repeatable: `run` and `schedule create` read it with `parse_inputs`."""
    parser.add_argument(
        "--input", "-i", action="append", default=[], metavar="NAME=VALUE", help=help
    )


def parse_inputs(spec: PipelineSpec, pairs: list[str]) -> dict[str, Any]:
    """`NAME=VALUE` pairs; VALUE is read as JSON where the input's type is not a string."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--input {pair!r}: write NAME=VALUE")
        decl = spec.inputs.get(name)
        value: Any = text
        if decl is not None and decl.type in ("object", "array"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise UsageError(
                    f"--input {name}: {text!r} is not valid JSON ({error.msg} at column "
                    f"{error.colno}); an {decl.type} input is read as JSON"
                ) from None
        elif decl is not None and decl.type != "string":
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text  # the type check says what is wrong: "expected integer"
        values[name] = value
    return values


def parse_value(text: str) -> Any:
    """A command-line value: JSON where it parses (`42`, `true`, `{"a": 1}`), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def quoting_hint(text: str, refusal: str) -> str:
    """How to send `text` as a string, when a string schema refused what it parsed as.

    `stepflow input RUN STEP 42` sends the number 42; a step that wants text says
    "42 is not of type 'string'", and the fix is JSON quotes.
    """
    if "is not of type 'string'" not in refusal or isinstance(parse_value(text), str):
        return ""
    return f" (to send the text {text!r}, quote it as JSON: '{json.dumps(text)}')"


def parse_interval(text: str) -> timedelta:
    """`30s`, `5m`, `1h30m`: how often a schedule starts a run."""
    try:
        value = parse_duration(text)
    except ValueError as error:
        raise UsageError(f"--every {text!r}: {error}") from None
    if not isinstance(value, timedelta):
        raise UsageError(f"--every {text!r}: use a number and a unit, e.g. 30s, 5m, 1h")
    return value
