"""The reference pages, generated from the code at every docs build (an MkDocs hook).

Each page is made from the one place its facts live, so a field, command, setting or
error type added to the code appears in the docs with nobody editing them:

- reference/pipeline.md: the pipeline file format, from the models' JSON Schema
  (`PipelineSpec.model_json_schema()`: the fields' `description` strings are the text);
- reference/cli.md: the `stepflow` command, from its argparse parser;
- reference/settings.md: `STEPFLOW_*` settings, from `Settings.model_fields`;
- reference/errors.md: error types, from the `ErrorType` catalogue (its members'
  docstrings are read from the source with `ast`: the enum cannot hold them).

Nothing here is committed as markdown: the pages exist only in the built site.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

PAGES: dict[str, Callable[[], str]] = {}
"""Generated pages by path under docs/, each with the function that writes it."""


def page(path: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(write: Callable[[], str]) -> Callable[[], str]:
        PAGES[path] = write
        return write

    return register


GENERATED_NOTE = (
    "<!-- Generated at build time by docs/_hooks/reference.py from {source}: edit that, "
    "not this page. -->\n\n"
)


def cell(text: str) -> str:
    """Text that stays inside one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


# ---------------------------------------------------------------------------
# Pipeline file format


def anchor(name: str) -> str:
    """The heading id MkDocs gives `## Name` (lowercase; the models' names are one word)."""
    return name.lower()


def schema_type(schema: dict[str, Any]) -> str:
    """A JSON Schema fragment as a short, readable type, linking the models it names."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{anchor(name)})"
    if "const" in schema:
        return code(json.dumps(schema["const"]))
    if "enum" in schema:
        return " or ".join(code(json.dumps(v)) for v in schema["enum"])
    for union in ("anyOf", "oneOf"):
        if union in schema:
            kinds = [schema_type(s) for s in schema[union] if s.get("type") != "null"]
            nullable = any(s.get("type") == "null" for s in schema[union])
            return " or ".join(kinds) + (" or null" if nullable else "")
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        return f"list of {schema_type(items)}" if items else "list"
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, dict) and values:
            return f"map of string to {schema_type(values)}"
        return "object"
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind:
        return str(kind)
    return "any"


def schema_limits(schema: dict[str, Any]) -> list[str]:
    """Constraints worth a reader's eye: patterns, bounds, lengths."""
    words = {
        "pattern": "matches",
        "minimum": ">=",
        "exclusiveMinimum": ">",
        "maximum": "<=",
        "exclusiveMaximum": "<",
        "minItems": "at least {} items",
        "maxItems": "at most {} items",
        "minLength": "at least {} characters",
        "maxLength": "at most {} characters",
    }
    found: list[str] = []
    for key, word in words.items():
        if key in schema:
            value = schema[key]
            shown = code(str(value)) if key == "pattern" else str(value)
            found.append(word.format(value) if "{}" in word else f"{word} {shown}")
    for union in ("anyOf", "oneOf"):
        for option in schema.get(union, []):
            found.extend(schema_limits(option))
    return found


def model_section(name: str, schema: dict[str, Any]) -> str:
    lines = [f"## {name}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    properties: dict[str, dict[str, Any]] = schema.get("properties", {})
    required = set(schema.get("required", []))
    if properties:
        lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        for field, spec in properties.items():
            if field in required:
                default = "**required**"
            elif "default" in spec:
                default = code(json.dumps(spec["default"]))
            else:
                default = "empty"
            about = spec.get("description", "")
            limits = schema_limits(spec)
            if limits:
                about = f"{about} ({'; '.join(limits)})" if about else "; ".join(limits)
            lines.append(
                f"| {code(field)} | {cell(schema_type(spec))} | {cell(default)} | {cell(about)} |"
            )
        lines.append("")
    if schema.get("additionalProperties") is False:
        lines += ["Other keys are errors.", ""]
    return "\n".join(lines)


@page("reference/pipeline.md")
def pipeline_page() -> str:
    from stepflow import PipelineSpec

    return pipeline_markdown(PipelineSpec.model_json_schema())


def pipeline_markdown(schema: dict[str, Any]) -> str:
    """The pipeline format page from the JSON Schema of `PipelineSpec` (or a model like it)."""
    schema = dict(schema)
    definitions: dict[str, dict[str, Any]] = dict(schema.pop("$defs", {}))
    root = schema.pop("$ref", None)
    if isinstance(root, str) and root.startswith("#/$defs/"):
        # A recursive model (a loop's body and a sub-pipeline hold steps, and pipelines): the
        # schema's root is a `$ref` to its own definition, which heads the page.
        schema = {**definitions.pop(root.removeprefix("#/$defs/")), **schema}
    parts = [
        GENERATED_NOTE.format(source="the pipeline models' JSON Schema"),
        "# Pipeline file format\n\n",
        "A pipeline file (YAML) holds one `PipelineSpec`; the same models build one in Python "
        "(`from stepflow import PipelineSpec`). Every field below, with its type, default and "
        "description, comes from the models' JSON Schema, the one `stepflow schema` prints for "
        "editors. Durations are written `250ms`, `30s`, `5m`, `2h`, `1h30m`. Strings in `args`, "
        "`input`, `instructions` and `message` may hold `{{ inputs.NAME }}` and "
        "`{{ steps.ID.output }}` references (and `{{ item }}`, `{{ index }}`, `{{ loop.* }}` "
        "where they exist: see [Control flow](../guides/control-flow.md)).\n\n",
        model_section(schema.get("title", "PipelineSpec"), schema),
    ]
    steps = schema["properties"]["steps"]["items"]
    kinds = steps.get("discriminator", {}).get("mapping", {})
    if kinds:
        rows = "\n".join(
            f"| {code(kind)} | {schema_type({'$ref': ref})} |" for kind, ref in kinds.items()
        )
        parts.append(
            "## Step kinds\n\nA step's `kind` picks its model:\n\n"
            f"| kind | model |\n| --- | --- |\n{rows}\n\n"
        )
    for name in sorted(definitions):
        parts.append(model_section(name, definitions[name]))
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# The `stepflow` command


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    """(name, help, parser) of each subcommand, in the order `--help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += f" {metavar or action.dest.upper()}"
        else:
            name = metavar or action.dest
        about = action.help or ""
        if action.choices:
            about = f"{about} one of: {', '.join(map(str, action.choices))}".strip()
        if action.default not in (None, False, argparse.SUPPRESS, []) and action.nargs != 0:
            about = f"{about} (default: {action.default})".strip()
        if action.required and action.option_strings:
            about = f"{about} (required)".strip()
        rows.append(f"| {code(name)} | {cell(about)} |")
    return rows


def command_sections(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[str]:
    for name, about, sub in subcommands(parser):
        words = [*path, name]
        usage = " ".join(sub.format_usage().split())
        usage = usage.removeprefix("usage: ")
        lines = [f"## stepflow {' '.join(words[1:])}", ""]
        if about or sub.description:
            lines += [cell(sub.description or about), ""]
        lines += ["```", usage, "```", ""]
        rows = argument_rows(sub)
        if rows:
            lines += ["| argument | meaning |", "| --- | --- |", *rows, ""]
        yield "\n".join(lines)
        yield from command_sections(sub, words)


@page("reference/cli.md")
def cli_page() -> str:
    from stepflow.client.cli import build_parser

    parser = build_parser()
    parts = [
        GENERATED_NOTE.format(source="the parser of `stepflow` (client/cli.py)"),
        "# The `stepflow` command\n\n",
        f"{parser.description} {parser.epilog or ''}\n\n",
        "A refusal is one line on stderr starting `stepflow:`. Every command reads the "
        "connection settings (see [Clusters and Temporal Cloud](../guides/clusters.md)) and the "
        "[settings](settings.md).\n\n",
        "```\n" + " ".join(parser.format_usage().split()).removeprefix("usage: ") + "\n```\n\n",
        "| option | meaning |\n| --- | --- |\n" + "\n".join(argument_rows(parser)) + "\n\n",
        "| command | does |\n| --- | --- |\n"
        + "\n".join(
            f"| [{code('stepflow ' + name)}](#stepflow-{name}) | {cell(about)} |"
            for name, about, _ in subcommands(parser)
        )
        + "\n\n",
    ]
    parts.extend(command_sections(parser, ["stepflow"]))
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# Settings


def type_name(annotation: Any) -> str:
    """A field's annotation as a reader writes it: `list[str]`, `int` or None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " or ".join(code(json.dumps(v)) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        named = [type_name(a) for a in options if a is not type(None)]
        return " or ".join(named) + (" or none" if type(None) in options else "")
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text)  # module paths: typing.X, a.b.Model
    return code(text)


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if value is None or value in ([], {}):
        return "(none)"
    if hasattr(value, "total_seconds"):
        seconds = int(value.total_seconds())
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds % size == 0:
                return code(f"{seconds // size}{unit}")
        return code(f"{seconds}s")
    return code(str(value))


@page("reference/settings.md")
def settings_page() -> str:
    from stepflow.runtime.project import CONFIG_FILE
    from stepflow.runtime.settings import Settings

    rows = []
    for name, field in Settings.model_fields.items():
        about = field.description or ""
        limits = [
            f"{word} {getattr(m, key)}"
            for m in field.metadata
            for key, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
            if getattr(m, key, None) is not None
        ]
        if limits:
            about = f"{about} ({', '.join(limits)})" if about else ", ".join(limits)
        rows.append(
            f"| {code('STEPFLOW_' + name.upper())} | {code(name)} | "
            f"{cell(type_name(field.annotation))} | {cell(default_text(field))} | {cell(about)} |"
        )
    return (
        GENERATED_NOTE.format(source="`Settings` (runtime/settings.py)")
        + "# Settings\n\n"
        + f"{inspect.cleandoc(Settings.__doc__ or '')}\n\n"
        + "Each setting is read, first to last, from the environment variable "
        "`STEPFLOW_<NAME>`, then from the project's file: the nearest "
        f"`{CONFIG_FILE}`, or a `pyproject.toml` with a `[tool.stepflow]` table, at or "
        "above the current directory, under the key in the second column (relative paths "
        "there are relative to the file). Lists are comma-separated in a variable and TOML "
        "lists in the file. The Temporal connection (`TEMPORAL_*`) is not here: see "
        "[Clusters and Temporal Cloud](../guides/clusters.md).\n\n"
        "```toml\n# stepflow.toml (or [tool.stepflow] in pyproject.toml)\n"
        'tool_modules = ["mytools"]\nimport_path = ["."]\ntask_queue = "stepflow"\n```\n\n'
        "| variable | file key | type | default | meaning |\n| --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + "\n"
    )


# ---------------------------------------------------------------------------
# Error types


def error_catalogue(source: str) -> list[tuple[str, str, str, str]]:
    """(group, member name, value, docstring) of each `ErrorType` member, in source order.

    The groups are the comments (`# Agent steps.`) above each run of members.
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    catalogue: list[tuple[str, str, str, str]] = []
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == "ErrorType"):
            continue
        group = ""
        previous_end = node.body[0].end_lineno or node.lineno
        for index, statement in enumerate(node.body):
            if not isinstance(statement, ast.Assign):
                previous_end = statement.end_lineno or previous_end
                continue
            for line in lines[previous_end : statement.lineno - 1]:
                comment = line.strip()
                if comment.startswith("#"):
                    group = comment.lstrip("# ").rstrip(".")
            target = statement.targets[0]
            value = statement.value
            if not (isinstance(target, ast.Name) and isinstance(value, ast.Constant)):
                continue
            following = node.body[index + 1] if index + 1 < len(node.body) else None
            doc = ""
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                doc = inspect.cleandoc(following.value.value)
            catalogue.append((group, target.id, str(value.value), doc))
            previous_end = statement.end_lineno or statement.lineno
    return catalogue


@page("reference/errors.md")
def errors_page() -> str:
    from stepflow.workflows import errors

    catalogue = error_catalogue(Path(inspect.getfile(errors)).read_text())
    parts = [
        GENERATED_NOTE.format(source="the `ErrorType` catalogue (workflows/errors.py)"),
        "# Error types\n\n",
        f"{inspect.cleandoc(errors.ErrorType.__doc__ or '')} A step record's `error_type`, "
        "a failure's type in the Web UI and `non_retryable_errors` in a retry policy use these "
        "names. *Retried* says whether Temporal tries an activity again after it failed with "
        "that type (within the step's retry policy).\n\n",
    ]
    groups: dict[str, list[str]] = {}
    for group, _, value, doc in catalogue:
        retried = "yes" if errors.ErrorType(value).retryable else "no"
        row = f"| {code(value)} | {retried} | {cell(doc)} |"
        groups.setdefault(group or "Other", []).append(row)
    for group, rows in groups.items():
        parts.append(f"## {group}\n\n| type | retried | meaning |\n| --- | --- | --- |\n")
        parts.append("\n".join(rows) + "\n\n")
    return "".join(parts)


# ---------------------------------------------------------------------------
# The MkDocs hook


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site before MkDocs reads the navigation and links."""
    from mkdocs.structure.files import File

    for path, write in PAGES.items():
        files.append(File.generated(config, path, content=write()))
    return files
