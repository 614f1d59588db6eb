"""`{{ inputs.NAME }}` and `{{ steps.ID.output.field }}` references in step arguments.

A string that is exactly one reference becomes the referenced value with its
type (a list stays a list); a reference inside longer text is written into it
(JSON for objects and lists). Pure functions: imported in the workflow sandbox.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_REFERENCE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


class TemplateError(ValueError):
    """A reference that is malformed, or that points at nothing."""


@dataclass(frozen=True)
class Reference:
    """A parsed reference: `inputs.topic` or `steps.fetch.output.items.0`."""

    text: str
    root: str  # "inputs" or "steps"
    name: str  # the input name or the step id
    path: tuple[str, ...]  # fields inside the value (after `output` for steps)


def parse_reference(expression: str) -> Reference:
    parts = expression.split(".")
    if any(not _SEGMENT.match(p) for p in parts):
        raise TemplateError(f"malformed reference {{{{ {expression} }}}}")
    if parts[0] == "inputs" and len(parts) >= 2:
        return Reference(expression, "inputs", parts[1], tuple(parts[2:]))
    if parts[0] == "steps" and len(parts) >= 3 and parts[2] == "output":
        return Reference(expression, "steps", parts[1], tuple(parts[3:]))
    raise TemplateError(
        f"unknown reference {{{{ {expression} }}}}: use {{{{ inputs.NAME }}}} "
        "or {{ steps.ID.output }} (optionally followed by .field)"
    )


def iter_references(value: Any) -> Iterator[Reference]:
    """Every reference in a nested structure of dicts, lists and strings."""
    if isinstance(value, str):
        for match in _REFERENCE.finditer(value):
            yield parse_reference(match.group(1))
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_references(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_references(item)


def stray_braces(value: Any) -> Iterator[str]:
    """Text around a `{{` or `}}` that belongs to no complete `{{ ... }}`: a template half-written.

    Rendering leaves such text as it is, so `{{ steps.a.output }` would reach a tool
    or a model literally; `stepflow validate` refuses it instead.
    """
    if isinstance(value, str):
        rest = _REFERENCE.sub(" ", value)
        for marker in ("{{", "}}"):
            at = rest.find(marker)
            if at >= 0:
                yield rest[at : at + 40].strip()
                return
    elif isinstance(value, dict):
        for item in value.values():
            yield from stray_braces(item)
    elif isinstance(value, list):
        for item in value:
            yield from stray_braces(item)


def is_templated(value: Any) -> bool:
    """Whether a value holds any `{{ ... }}` (its final type is then known only at run time)."""
    if isinstance(value, str):
        return _REFERENCE.search(value) is not None
    if isinstance(value, dict):
        return any(is_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(is_templated(v) for v in value)
    return False


def _lookup(ref: Reference, inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
    if ref.root == "inputs":
        if ref.name not in inputs:
            raise TemplateError(f"{{{{ {ref.text} }}}}: no input named {ref.name!r}")
        value = inputs[ref.name]
    else:
        if ref.name not in outputs:
            raise TemplateError(f"{{{{ {ref.text} }}}}: no output of step {ref.name!r}")
        value = outputs[ref.name]
    walked = [ref.root, ref.name] + ([] if ref.root == "inputs" else ["output"])
    for field in ref.path:
        if isinstance(value, dict) and field in value:
            value = value[field]
        elif isinstance(value, list) and field.isdigit() and int(field) < len(value):
            value = value[int(field)]
        else:
            where = ".".join(walked)
            raise TemplateError(
                f"{{{{ {ref.text} }}}}: {where} has no field {field!r} "
                f"(it is a {type(value).__name__})"
            )
        walked.append(field)
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def render(value: Any, inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
    """Replace every reference in `value` with what it points at."""
    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value.strip())
        if whole:
            return _lookup(parse_reference(whole.group(1)), inputs, outputs)
        return _REFERENCE.sub(
            lambda m: _as_text(_lookup(parse_reference(m.group(1)), inputs, outputs)), value
        )
    if isinstance(value, dict):
        return {k: render(v, inputs, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, inputs, outputs) for v in value]
    return value
