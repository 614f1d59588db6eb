"""JSON Schemas from a pipeline spec: checked, and validated against, without ever fetching one.

A `$ref` may point anywhere a URI can, and `jsonschema` follows a reference it
cannot resolve locally by fetching it over HTTP. From a spec that is a request
a user chooses, sent by the worker (server-side request forgery) or by the
workflow itself (nondeterministic I/O in workflow code). So a spec's schemas
may only reference themselves: every `$ref` is a fragment (`#/$defs/x`), and
every validator built here has a registry that refuses to retrieve anything,
so a schema that got past the check still cannot fetch.

Pure functions: imported in the workflow sandbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import referencing
from referencing.exceptions import NoSuchResource

_REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")

_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
"""Keywords whose values are data, not schemas: a `$ref` key in them is just a key."""

_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
"""Keywords whose values map arbitrary names (which may be `$ref` or `const`) to schemas."""

LOCAL_ONLY = "only local refs ('#/...') are allowed"


def _refuse(uri: str) -> referencing.Resource[Any]:
    raise NoSuchResource(uri)


NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse)  # type: ignore[call-arg]
"""Resolves nothing by itself: `jsonschema` adds the meta-schemas, the schema adds itself."""


def validator_for(schema: Any) -> jsonschema.Draft202012Validator:
    """A Draft 2020-12 validator of `schema` that resolves references only within it."""
    return jsonschema.Draft202012Validator(schema, registry=NO_RETRIEVAL)


def outside_refs(schema: Any) -> list[str]:
    """One problem per reference that is not a fragment of the schema itself."""
    problems = []
    for path, keyword, ref in _references(schema, ()):
        if not ref.startswith("#"):
            where = f" at /{'/'.join(path)}" if path else ""
            problems.append(f"{keyword} {ref!r}{where} points outside the schema; {LOCAL_ONLY}")
    return problems


def check_schema(schema: Any) -> list[str]:
    """What makes `schema` unusable to check values with; empty when it is fine.

    A valid Draft 2020-12 schema whose references are all local, and one that
    can check a value: a `$ref` to a fragment that does not exist only shows then.
    """
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        return [f"not a valid JSON Schema: {err.message}"]
    problems = outside_refs(schema)
    if problems:
        return problems
    try:
        list(validator_for(schema).iter_errors(None))
    except Exception as err:  # a reference that does not resolve, a pattern that does not compile
        return [f"cannot check values: {err}"]
    return []


def _references(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str, str]]:
    """`(path, keyword, reference)` for every reference keyword in a schema, however nested."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REFERENCE_KEYWORDS and isinstance(value, str):
                yield path, key, value
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                for name, subschema in value.items():
                    yield from _references(subschema, (*path, key, str(name)))
            elif key not in _DATA_KEYWORDS:
                yield from _references(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _references(item, (*path, str(index)))
