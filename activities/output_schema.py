"""An agent step's `output_schema`: resolve it, describe it to the model, check answers against it.

A schema is either inline JSON Schema (checked with `jsonschema`) or the
import path of a pydantic model, `"package.module:Model"` (checked by the
model itself, validators included). Both run on the worker, inside the model
activity, so the verdict is recorded in history and replay never re-judges.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
from pydantic import BaseModel, ValidationError

from stepflow.workflows.models import OutputSchema

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


class OutputSchemaError(Exception):
    """The `output_schema` itself is unusable: a bad import path or an invalid JSON schema."""


@dataclass(frozen=True)
class ResolvedSchema:
    json_schema: dict[str, Any]
    model: type[BaseModel] | None = None

    def check(self, answer: str | None) -> tuple[Any, str | None]:
        """Parse a final answer: `(value, None)` when it matches, `(None, why)` when not."""
        try:
            return self._check(answer)
        except Exception as err:  # a validator that raises, a $ref that does not resolve
            return None, f"the answer could not be checked: {type(err).__name__}: {err}"

    def _check(self, answer: str | None) -> tuple[Any, str | None]:
        text = answer or ""
        fenced = _FENCE.match(text)  # models like to wrap JSON in a code fence
        if fenced:
            text = fenced.group(1)
        if self.model is not None:
            try:
                return self.model.model_validate_json(text).model_dump(mode="json"), None
            except ValidationError as err:
                return None, _pydantic_message(err)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            return None, f"the answer is not valid JSON: {err}"
        errors = sorted(
            jsonschema.Draft202012Validator(self.json_schema).iter_errors(value),
            key=lambda e: list(e.absolute_path),
        )
        if errors:
            return None, "; ".join(_jsonschema_message(e) for e in errors[:5])
        return value, None


def _pydantic_message(err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "the answer"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _jsonschema_message(err: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "the answer"
    return f"{where}: {err.message}"


@functools.lru_cache(maxsize=256)
def _import_model(path: str) -> type[BaseModel]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise OutputSchemaError(
            f"output_schema {path!r} is not an import path like 'package.module:Model'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, and whatever the module raises as it loads
        raise OutputSchemaError(
            f"output_schema {path!r}: cannot import {module_name!r}: {err}"
        ) from None
    model = getattr(module, attr, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise OutputSchemaError(f"output_schema {path!r} is not a pydantic model")
    return model


def resolve_output_schema(schema: OutputSchema) -> ResolvedSchema:
    """Raises `OutputSchemaError` for an import path that does not resolve or a bad schema."""
    if isinstance(schema, str):
        model = _import_model(schema)
        return ResolvedSchema(json_schema=model.model_json_schema(), model=model)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise OutputSchemaError(
            f"output_schema is not a valid JSON schema: {err.message}"
        ) from None
    return ResolvedSchema(json_schema=schema)


def schema_instructions(schema: ResolvedSchema) -> str:
    """The paragraph appended to the system prompt, for models without `response_format`."""
    return (
        "Answer with only a JSON value that matches this JSON schema, no other text:\n"
        + json.dumps(schema.json_schema, sort_keys=True)
    )
