"""One Temporal activity type per registered tool (`tool_<name>`).

The wrapper validates the arguments against the tool's schema, gives the tool
its `ToolContext`, and turns what it raises into an `ApplicationError` whose
type is the exception's class name (what `retry.non_retryable_errors` matches)
and whose details carry the attempt number for the step's record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.context import ToolContext, ToolError, _enter, _exit
from activities.progress import report_retry
from activities.registry import ToolDefinition
from runtime.settings import get_settings
from workflows.models import ToolCallInput, ToolCallOutput, tool_activity_name

log = structlog.get_logger("stepflow.tool")

INVALID_ARGUMENTS = "ToolArgumentsInvalid"
INVALID_OUTPUT = "ToolOutputNotSerializable"


def _start(defn: ToolDefinition, call: ToolCallInput) -> tuple[dict[str, Any], Any]:
    info = activity.info()
    structlog.contextvars.clear_contextvars()  # sync tools share pool threads
    structlog.contextvars.bind_contextvars(
        workflow_id=info.workflow_id,
        run_id=info.workflow_run_id,
        step_id=call.step_id,
        tool=defn.name,
        attempt=info.attempt,
    )
    report_retry(call.step_id, call.report_to)
    try:
        kwargs = defn.validate_args(call.args)
    except ValidationError as err:
        raise ApplicationError(
            f"arguments of tool {defn.name!r} do not match its schema: {err}",
            {"attempt": info.attempt},
            type=INVALID_ARGUMENTS,
            non_retryable=True,
        ) from None
    token = _enter(
        ToolContext(
            step_id=call.step_id,
            tool=defn.name,
            idempotency_key=call.idempotency_key,
            attempt=info.attempt,
            workflow_id=info.workflow_id or "",
            heartbeat_details=tuple(info.heartbeat_details),
        )
    )
    if get_settings().log_content:  # arguments may be private: only when asked for
        log.info("tool call started", args=call.args)
    else:
        log.info("tool call started")
    return kwargs, token


def _finish(defn: ToolDefinition, result: Any, started: float) -> ToolCallOutput:
    try:
        output = to_jsonable_python(result)
    except PydanticSerializationError as err:
        raise ApplicationError(
            f"tool {defn.name!r} returned a value that cannot be stored as JSON: {err}",
            {"attempt": activity.info().attempt},
            type=INVALID_OUTPUT,
            non_retryable=True,
        ) from None
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    if get_settings().log_content:
        log.info("tool call succeeded", duration_ms=duration_ms, output=output)
    else:
        log.info("tool call succeeded", duration_ms=duration_ms)
    return ToolCallOutput(output=output, attempt=activity.info().attempt)


def _failure(defn: ToolDefinition, err: Exception, started: float) -> ApplicationError:
    attempt = activity.info().attempt
    log.warning(
        "tool call failed",
        error_type=type(err).__name__,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )
    if isinstance(err, ApplicationError):
        return err
    return ApplicationError(
        str(err) or type(err).__name__,
        {"attempt": attempt},
        type=type(err).__name__,
        non_retryable=isinstance(err, ToolError) and err.non_retryable,
    )


def make_tool_activity(defn: ToolDefinition) -> Callable[..., Any]:
    """The activity function that runs `defn`, registered under `tool_<name>`."""
    name = tool_activity_name(defn.name)

    if defn.is_async:

        async def run_async(call: ToolCallInput) -> ToolCallOutput:
            started = time.monotonic()
            kwargs, token = _start(defn, call)
            try:
                result = await defn.fn(**kwargs)
            except Exception as err:
                raise _failure(defn, err, started) from err
            finally:
                _exit(token)
            return _finish(defn, result, started)

        return activity.defn(name=name)(run_async)

    def run_sync(call: ToolCallInput) -> ToolCallOutput:
        started = time.monotonic()
        kwargs, token = _start(defn, call)
        try:
            result = defn.fn(**kwargs)
        except Exception as err:
            raise _failure(defn, err, started) from err
        finally:
            _exit(token)
        return _finish(defn, result, started)

    return activity.defn(name=name)(run_sync)


def tool_activities(tools: list[ToolDefinition]) -> list[Callable[..., Any]]:
    """Activities for every given tool, for `Worker(activities=...)`."""
    return [make_tool_activity(defn) for defn in tools]
