"""An MCP server's tool as a Stepflow `ToolDefinition`: `<server>.<tool>`, the server's schemas.

Arguments are checked against the tool's input schema with `jsonschema`, and
the problems are raised as a pydantic `ValidationError`, the error every caller
of `ToolDefinition.validate_args` already handles (the tool activity, the model
call's check of a tool call, `validate`).

A tool whose schema has an `idempotency_key` (or `idempotencyKey`) string
parameter gets the call's idempotency key there, the same on every retry; that
parameter is hidden from the model and from pipelines. Every call also carries
the key in the request's `_meta` (`io.stepflow/idempotency-key`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jsonschema
import structlog
from mcp.types import Tool
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from stepflow.activities.registry import ToolDefinition
from stepflow.workflows.templates import is_templated

log = structlog.get_logger("stepflow.mcp")

TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
"""Tool names MCP allows (its spec's SHOULD); others are left out, with a warning."""

IDEMPOTENCY_PARAMS = ("idempotency_key", "idempotencyKey")
IDEMPOTENCY_META_KEY = "io.stepflow/idempotency-key"

MAX_MESSAGE = 300
"""Characters of one schema error: the offending value may be large."""


class McpArguments(BaseModel):
    """Stands in for `args_model`: an MCP tool's arguments are checked against its JSON schema."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True, eq=False)
class McpToolDefinition(ToolDefinition):
    """A tool of an MCP server. `fn(**arguments)` calls it (on a worker; elsewhere it refuses)."""

    server: str = ""
    tool: str = ""
    """The tool's name on its server (`read`, of `files.read`)."""
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    idempotency_param: str | None = None

    def json_schema(self) -> dict[str, Any]:
        """The server's input schema, less the idempotency parameter Stepflow fills in."""
        schema = copy.deepcopy(self.input_schema) or {"type": "object", "properties": {}}
        if self.idempotency_param is not None:
            schema.get("properties", {}).pop(self.idempotency_param, None)
            required = [r for r in schema.get("required", []) if r != self.idempotency_param]
            if "required" in schema:
                schema["required"] = required
        return schema

    @cached_property
    def _validator(self) -> jsonschema.protocols.Validator | None:
        schema = self.json_schema()
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as err:
            # The server's problem, not the caller's: its arguments go through unchecked.
            log.warning("mcp tool has an invalid input schema", tool=self.name, error=err.message)
            return None
        validator: jsonschema.protocols.Validator = cls(schema)
        return validator

    def _errors(self, args: dict[str, Any]) -> list[jsonschema.ValidationError]:
        if self._validator is None:
            return []
        return sorted(self._validator.iter_errors(args), key=lambda e: list(e.absolute_path))

    def validate_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments as given, if the tool's schema accepts them.

        Raises:
            pydantic.ValidationError: one line per problem, located by argument.
        """
        errors = self._errors(args)
        if errors:
            raise ValidationError.from_exception_data(
                self.name,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "json_schema", "{message}", {"message": e.message[:MAX_MESSAGE]}
                        ),
                        loc=tuple(e.absolute_path),
                        input=None,  # the value may be large, or private: the message says enough
                    )
                    for e in errors
                ],
            )
        return dict(args)

    def check_static_args(self, args: dict[str, Any]) -> list[tuple[str, str]]:
        """Schema errors of arguments written in a pipeline file; templated values wait."""
        problems = []
        for error in self._errors(args):
            path = [str(part) for part in error.absolute_path]
            if path and path[0] in args and is_templated(args[path[0]]):
                continue
            problems.append((".".join(path) or "args", error.message[:MAX_MESSAGE]))
        return problems


def tool_definitions(
    server: str, tools: list[Tool], caller: Callable[[str], Callable[..., Any]]
) -> list[McpToolDefinition]:
    """The Stepflow definitions of a server's listed tools.

    Args:
        server: The server's configured name.
        tools: What `tools/list` answered.
        caller: Makes the function that calls a tool, given its Stepflow name.
    """
    definitions = []
    for tool in tools:
        if not TOOL_NAME_PATTERN.match(tool.name):
            log.warning("mcp tool left out: its name is not one MCP allows", server=server)
            continue
        name = f"{server}.{tool.name}"
        properties = (tool.input_schema or {}).get("properties") or {}
        param = next((p for p in IDEMPOTENCY_PARAMS if p in properties), None)
        definitions.append(
            McpToolDefinition(
                name=name,
                description=(tool.description or tool.title or "").strip(),
                fn=caller(name),
                args_model=McpArguments,
                is_async=True,
                server=server,
                tool=tool.name,
                input_schema=dict(tool.input_schema or {}),
                output_schema=tool.output_schema,
                idempotency_param=param,
            )
        )
    return definitions


def split_name(name: str) -> tuple[str, str]:
    """`files.read` -> (`files`, `read`); a name without a dot -> (`""`, name)."""
    server, dot, tool = name.partition(".")
    return (server, tool) if dot else ("", name)
