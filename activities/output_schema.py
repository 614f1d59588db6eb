"""An agent step's `output_schema`: resolve it, describe it to the model, check answers against it.

A schema is either inline JSON Schema (checked with `jsonschema`) or the
import path of a pydantic model, `"package.module:Model"` (checked by the
model itself, validators included). Both run on the worker, inside the model
activity, so the verdict is recorded in history and replay never re-judges.

An import path is code the worker runs, so it must name a module the worker
trusts: one of STEPFLOW_TOOL_MODULES or STEPFLOW_SCHEMA_MODULES, or a module
inside one of them (`mytools` trusts `mytools.schemas`, not the other way
round). Inline schemas may reference only themselves (`workflows.json_schemas`).
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
from temporalio.exceptions import ApplicationError

from stepflow.runtime.settings import get_settings
from stepflow.workflows.errors import ErrorType
from stepflow.workflows.json_schemas import outside_refs, validator_for
from stepflow.workflows.models import OutputSchema

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class OutputSchemaError(Exception):
    """The `output_schema` itself is unusable: a bad import path or an invalid JSON schema."""


class UnsafeSchema(ApplicationError):
    """An `output_schema` no worker will use: an untrusted module, a `$ref` outside the schema.

    Raised as it is from the model activity: non-retryable (`InvalidOutputSchema`),
    since no other attempt or worker would accept it either.
    """

    def __init__(self, message: str) -> None:
        kind = ErrorType.INVALID_OUTPUT_SCHEMA
        super().__init__(message, type=kind.value, non_retryable=not kind.retryable)

    def __str__(self) -> str:
        return self.message  # a SpecIssue's message, without the type in front


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
            validator_for(self.json_schema).iter_errors(value),
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


def trusted_modules() -> list[str]:
    """The modules (with everything inside them) that `output_schema` paths may import."""
    settings = get_settings()
    return [*settings.tool_modules, *settings.schema_modules]


def is_trusted(module_name: str, trusted: list[str]) -> bool:
    """Whether `module_name` is one of `trusted` or inside one of them."""
    return any(module_name == t or module_name.startswith(t + ".") for t in trusted)


def _trusted_model(path: str) -> type[BaseModel]:
    """The model at `path`, imported only when its module is trusted."""
    module_name, _, attr = path.partition(":")
    if not _MODULE_NAME.fullmatch(module_name) or not attr:
        raise OutputSchemaError(
            f"output_schema {path!r} is not an import path like 'package.module:Model'"
        )
    # Checked before anything is imported: importing a module runs it.
    if not is_trusted(module_name, trusted_modules()):
        raise UnsafeSchema(
            f"output_schema {path!r}: module {module_name!r} is not trusted; add it (or its "
            "package) to STEPFLOW_SCHEMA_MODULES where the workers and `stepflow` run"
        )
    return _import_model(path)


@functools.lru_cache(maxsize=256)
def _import_model(path: str) -> type[BaseModel]:
    module_name, _, attr = path.partition(":")
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
    """The schema ready to check answers with.

    Raises:
        OutputSchemaError: an import path that does not resolve, or an invalid JSON schema.
        UnsafeSchema: a module that is not trusted, or a `$ref` outside the schema.
    """
    if isinstance(schema, str):
        model = _trusted_model(schema)
        return ResolvedSchema(json_schema=model.model_json_schema(), model=model)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise OutputSchemaError(
            f"output_schema is not a valid JSON schema: {err.message}"
        ) from None
    # The pipeline's own check refuses these; a run that got here around it still never fetches.
    outside = outside_refs(schema)
    if outside:
        raise UnsafeSchema(outside[0])
    return ResolvedSchema(json_schema=schema)


def schema_instructions(schema: ResolvedSchema) -> str:
    """The paragraph appended to the system prompt, for models without `response_format`."""
    return (
        "Answer with only a JSON value that matches this JSON schema, no other text:\n"
        + json.dumps(schema.json_schema, sort_keys=True)
    )
