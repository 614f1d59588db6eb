"""`{{ inputs.NAME }}` and `{{ steps.ID.output.field }}` references in step arguments.

A string that is exactly one reference becomes the referenced value with its
type (a list stays a list); a reference inside longer text is written into it
(JSON for objects and lists). Pure functions: imported in the workflow sandbox.

Inside a for_each step `{{ item.field }}` and `{{ index }}` read the instance's
item; inside a loop body `{{ loop.iteration }}` and `{{ loop.previous.ID.output }}`
read the loop. These, and the outputs of dependencies that did not succeed (a
`none_failed` or `all_done` step's), read as null all the way down.
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
    root: str  # "inputs", "steps", or a scope's name ("item", "index", "loop")
    name: str  # the input name or the step id (the root itself for a scope)
    path: tuple[str, ...]  # fields inside the value (after `output` for steps)


SCOPE_ROOTS = ("item", "index", "loop")
"""Names that exist only inside a for_each step (`item`, `index`) or a loop body (`loop`)."""


def parse_reference(expression: str) -> Reference:
    parts = expression.split(".")
    if any(not _SEGMENT.match(p) for p in parts):
        raise TemplateError(f"malformed reference {{{{ {expression} }}}}")
    if parts[0] == "inputs" and len(parts) >= 2:
        return Reference(expression, "inputs", parts[1], tuple(parts[2:]))
    if parts[0] == "steps" and len(parts) >= 3 and parts[2] == "output":
        return Reference(expression, "steps", parts[1], tuple(parts[3:]))
    if parts[0] in SCOPE_ROOTS and (parts[0] != "index" or len(parts) == 1):
        return Reference(expression, parts[0], parts[0], tuple(parts[1:]))
    raise TemplateError(
        f"unknown reference {{{{ {expression} }}}}: use {{{{ inputs.NAME }}}} "
        "or {{ steps.ID.output }} (optionally followed by .field), or inside a for_each "
        "step {{ item }} and {{ index }}, inside a loop {{ loop.iteration }}"
    )


def _strings(value: Any) -> Iterator[str]:
    """Every string in a nested structure of dicts, lists and strings, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def iter_references(value: Any) -> Iterator[Reference]:
    """Every reference in a nested structure of dicts, lists and strings."""
    for text in _strings(value):
        for match in _REFERENCE.finditer(text):
            yield parse_reference(match.group(1))


def stray_braces(value: Any) -> Iterator[str]:
    """Text around a `{{` or `}}` that belongs to no complete `{{ ... }}`: a template half-written.

    Rendering leaves such text as it is, so `{{ steps.a.output }` would reach a tool
    or a model literally; `stepflow validate` refuses it instead. One per string.
    """
    for text in _strings(value):
        rest = _REFERENCE.sub(" ", text)
        at = next((i for i in (rest.find("{{"), rest.find("}}")) if i >= 0), -1)
        if at >= 0:
            yield rest[at : at + 40].strip()


def is_templated(value: Any) -> bool:
    """Whether a value holds any `{{ ... }}` (its final type is then known only at run time)."""
    return any(_REFERENCE.search(text) for text in _strings(value))


@dataclass(frozen=True)
class Scope:
    """What a reference may read besides inputs and outputs: `item`, `index`, `loop`, nulls."""

    values: dict[str, Any]
    """`item`, `index` and `loop`, where they exist."""
    nullable: frozenset[str] = frozenset()
    """Steps whose output reads as null all the way down: dependencies that did not succeed."""


NO_SCOPE = Scope({})


def _lookup(
    ref: Reference, inputs: dict[str, Any], outputs: dict[str, Any], scope: Scope = NO_SCOPE
) -> Any:
    nullable = False
    if ref.root == "inputs":
        if ref.name not in inputs:
            raise TemplateError(f"{{{{ {ref.text} }}}}: no input named {ref.name!r}")
        value = inputs[ref.name]
        walked = [ref.root, ref.name]
    elif ref.root == "steps":
        if ref.name not in outputs:
            raise TemplateError(f"{{{{ {ref.text} }}}}: no output of step {ref.name!r}")
        value = outputs[ref.name]
        nullable = ref.name in scope.nullable
        walked = [ref.root, ref.name, "output"]
    else:
        if ref.root not in scope.values:
            where = "a for_each step" if ref.root != "loop" else "a loop's steps"
            raise TemplateError(f"{{{{ {ref.text} }}}}: {ref.root!r} exists only inside {where}")
        value = scope.values[ref.root]
        nullable = True
        walked = [ref.root]
    for field in ref.path:
        if value is None and nullable:
            return None  # a skipped dependency, the first iteration's `loop.previous`
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


def render(
    value: Any, inputs: dict[str, Any], outputs: dict[str, Any], scope: Scope = NO_SCOPE
) -> Any:
    """Replace every reference in `value` with what it points at."""
    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value.strip())
        if whole:
            return _lookup(parse_reference(whole.group(1)), inputs, outputs, scope)
        return _REFERENCE.sub(
            lambda m: _as_text(_lookup(parse_reference(m.group(1)), inputs, outputs, scope)),
            value,
        )
    if isinstance(value, dict):
        return {k: render(v, inputs, outputs, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, inputs, outputs, scope) for v in value]
    return value
