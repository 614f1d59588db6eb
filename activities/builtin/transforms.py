"""Pure JSON and text tools: no I/O, same output for the same input."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import Field

from stepflow.activities.context import ToolError
from stepflow.activities.registry import tool
from stepflow.runtime.settings import get_settings

MAX_FORMAT_NUMBER = 4096
"""The largest width or precision a `text_template` format spec may ask for.

`{x:>2000000000}` would build a 2 GB string (`{x:.999999999f}` a 1 GB one) before
any output limit is checked; a few thousand columns is more than any text needs.
"""


class InvalidJson(ToolError):
    """Text that is not valid JSON; `line` and `column` (1-based) say where."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        super().__init__(message, non_retryable=True)
        self.line = line
        self.column = column


class JsonPathNotFound(ToolError):
    """A `json_select` path that leads to nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


class MissingTemplateValue(ToolError):
    """A `{name}` in a template that `values` has no entry for."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


class InvalidTemplate(ToolError):
    """A template that `str.format` cannot read (a stray brace, a bad format spec...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


@tool
def echo(value: Annotated[Any, Field(description="Any value.")] = None) -> Any:
    """Return the value it is given, unchanged (a no-op step, for tests and benchmarks).

    Args:
        value: Any JSON value.

    Returns:
        The same value.
    """
    return value


def _reject_constant(name: str) -> Any:
    raise InvalidJson(f"invalid JSON: {name} is not a JSON value (JSON has no NaN or Infinity)")


@tool
def json_parse(text: Annotated[str, Field(description="The JSON text to parse.")]) -> Any:
    """Parse JSON text into a value (object, array, string, number, boolean or null).

    Args:
        text: The JSON text.

    Returns:
        The parsed value.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise InvalidJson(
            f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
            line=err.lineno,
            column=err.colno,
        ) from None


@tool
def json_dump(
    value: Annotated[Any, Field(description="The value to write as JSON.")],
    indent: Annotated[
        int | None, Field(description="Spaces per indentation level; null for one line.")
    ] = 2,
) -> str:
    """Write a value as JSON text.

    Args:
        value: The value to write.
        indent: Spaces per indentation level; null writes everything on one line.

    Returns:
        The JSON text (non-ASCII characters are kept as they are).
    """
    try:
        return json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ToolError(f"cannot write the value as JSON: {err}", non_retryable=True) from None


def _describe_keys(mapping: Mapping[Any, Any], limit: int = 20) -> str:
    keys = [str(key) for key in mapping]
    if not keys:
        return "the object is empty"
    shown = ", ".join(repr(key) for key in keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"keys: {shown}{more}"


@tool
def json_select(
    value: Annotated[Any, Field(description="The value to look into.")],
    path: Annotated[
        str, Field(description="Dot path of keys and list indexes, e.g. `items.0.name`.")
    ],
) -> Any:
    """Pick one part of a JSON value by a dot path of keys and list indexes.

    For example `items.0.name` is the `name` of the first entry of `items`.
    Negative indexes count from the end (`items.-1`). An empty path selects the
    whole value.

    Args:
        value: The value to look into (an object or array).
        path: Dot-separated keys and list indexes.

    Returns:
        The selected part.
    """
    current = value
    if path == "":
        return current
    walked: list[str] = []
    for segment in path.split("."):
        where = ".".join(walked) or "the top level"
        if isinstance(current, Mapping):
            if segment not in current:
                raise JsonPathNotFound(
                    f"json_select {path!r}: no key {segment!r} at {where} "
                    f"({_describe_keys(current)})"
                )
            current = current[segment]
        elif isinstance(current, Sequence) and not isinstance(current, str | bytes):
            try:
                index = int(segment)
            except ValueError:
                raise JsonPathNotFound(
                    f"json_select {path!r}: {where} is a list, so {segment!r} must be an index"
                ) from None
            if not -len(current) <= index < len(current):
                raise JsonPathNotFound(
                    f"json_select {path!r}: no index {index} at {where} "
                    f"(the list has {len(current)} items)"
                )
            current = current[index]
        else:
            raise JsonPathNotFound(
                f"json_select {path!r}: cannot look up {segment!r} in {where}, "
                f"which is a {type(current).__name__}, not an object or list"
            )
        walked.append(segment)
    return current


_SPEC_NUMBER = re.compile(r"\d+")


class _SafeFormatter(string.Formatter):
    """`str.format_map` without access to private attributes, and with bounded output.

    Refuses `{x.__class__}`, a width or precision over `MAX_FORMAT_NUMBER`, and
    fields that together would format more than `limit` characters.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.formatted = 0
        # `vformat` looks a field up, then the fields nested in its spec, then formats
        # the nested ones and the field itself: a stack pairs each spec with its field.
        self.fields: list[str] = []

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if re.search(r"\.\s*_", field_name):
            raise InvalidTemplate(
                f"template field {{{field_name}}} reads a private attribute, which is not allowed"
            )
        found = super().get_field(field_name, args, kwargs)
        self.fields.append(field_name)
        return found

    def format_field(self, value: Any, format_spec: str) -> Any:
        field = self.fields.pop() if self.fields else "?"
        # Only a width, a precision, and a digit as the fill character are numbers in a spec.
        for digits in _SPEC_NUMBER.findall(format_spec):
            # Compared as text first: int() refuses numbers of over 4,300 digits.
            if len(digits.lstrip("0")) > 9 or int(digits) > MAX_FORMAT_NUMBER:
                shown = digits if len(digits) <= 20 else f"{digits[:20]}... ({len(digits)} digits)"
                raise InvalidTemplate(
                    f"template field {{{field}}} asks for a width or precision of {shown}: "
                    f"at most {MAX_FORMAT_NUMBER:,} is allowed"
                )
        text = super().format_field(value, format_spec)
        self.formatted += len(text)
        if self.formatted > self.limit:
            raise InvalidTemplate(
                f"the template's fields make more than {self.limit:,} characters (at field "
                f"{{{field}}}), over the tool output limit (STEPFLOW_TOOL_MAX_OUTPUT_BYTES)"
            )
        return text


def _field_roots(template: str) -> list[str]:
    """The top-level names the template's fields read, in order, without repeats."""
    roots: list[str] = []
    pending = [template]
    while pending:
        for _, field, spec, _ in string.Formatter().parse(pending.pop()):
            if field:
                root = re.split(r"[.\[]", field, maxsplit=1)[0]
                if root and not root.isdigit() and root not in roots:
                    roots.append(root)
            if spec:
                pending.append(spec)
    return roots


@tool
def text_template(
    template: Annotated[
        str, Field(description="Text with `{name}` fields; write `{{` and `}}` for braces.")
    ],
    values: Annotated[dict[str, Any], Field(description="The value of each field, by name.")],
) -> str:
    """Fill a text template's `{name}` fields from a dictionary of values.

    Uses Python's `str.format` rules: `{name}` inserts a value, `{name:>10}`
    formats it, `{user[email]}` reads a key of a nested object, and `{{` / `}}`
    write literal braces. A width or precision (`{name:>N}`, `{name:.Nf}`, or one
    given by another field, `{name:{width}}`) may be at most 4,096; the fields
    together may make at most STEPFLOW_TOOL_MAX_OUTPUT_BYTES characters.

    Args:
        template: The text with `{name}` fields.
        values: The value of each field, by name.

    Returns:
        The filled-in text.
    """
    try:
        formatter = _SafeFormatter(get_settings().tool_max_output_bytes)
        return formatter.vformat(template, (), values)
    except KeyError as err:
        key = err.args[0] if err.args else "?"
        missing = [name for name in _field_roots(template) if name not in values]
        if not missing:  # a nested lookup such as {user[email]}
            raise MissingTemplateValue(
                f"the template looks up the key {key!r} inside a value that has no such key"
            ) from None
        available = ", ".join(repr(name) for name in values) or "none"
        needed = ", ".join("{" + name + "}" for name in missing)
        raise MissingTemplateValue(
            f"the template needs a value for {needed}, which values does not have "
            f"(it has: {available})"
        ) from None
    except IndexError:
        raise InvalidTemplate(
            "the template has a positional field such as `{}` or `{0}`: name every field, "
            "e.g. `{title}`"
        ) from None
    except ToolError:
        raise
    except (ValueError, AttributeError, TypeError) as err:
        raise InvalidTemplate(
            f"invalid template: {err} (write `{{{{` and `}}}}` for literal braces)"
        ) from None


@tool
def text_split(
    text: Annotated[str, Field(description="The text to split.")],
    separator: Annotated[
        str | None, Field(description="Where to split; null splits on runs of whitespace.")
    ] = None,
    max_parts: Annotated[
        int | None, Field(ge=1, description="At most this many parts; the last keeps the rest.")
    ] = None,
) -> list[str]:
    """Split a text into parts at a separator.

    Args:
        text: The text to split.
        separator: The separator string; null splits on runs of whitespace and
            drops empty parts.
        max_parts: At most this many parts: the last part holds the rest of the
            text. Null: no limit.

    Returns:
        The parts, in order.
    """
    if separator == "":
        raise ToolError("the separator is empty: give at least one character", non_retryable=True)
    if max_parts is not None and max_parts < 1:
        raise ToolError(f"max_parts must be at least 1, not {max_parts}", non_retryable=True)
    return text.split(separator, -1 if max_parts is None else max_parts - 1)


@tool
def text_join(
    parts: Annotated[list[str], Field(description="The texts to join, in order.")],
    separator: Annotated[str, Field(description="What goes between two parts.")] = "\n",
) -> str:
    """Join texts into one, with a separator between each two.

    Args:
        parts: The texts to join, in order.
        separator: What goes between two parts (a newline unless given).

    Returns:
        The joined text.
    """
    return separator.join(parts)


@tool
def word_count(text: Annotated[str, Field(description="The text to count.")]) -> int:
    """Count the words in a text (runs of characters between whitespace).

    Args:
        text: The text to count.

    Returns:
        The number of words.
    """
    return len(text.split())
