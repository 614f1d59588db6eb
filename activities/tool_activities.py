"""One Temporal activity type per registered tool (`tool_<name>`).

`ToolActivities` holds what the tools' activities need (the tools, the worker's
retry reporter, where settings come from) and makes one activity per tool. Each
checks the size of the arguments and validates them against the
tool's schema, gives the tool its `ToolContext`, checks the size of the result,
and turns what the tool raises into an `ApplicationError` whose type is the
exception's class name (what `retry.non_retryable_errors` matches) and whose
details carry the attempt number for the step's record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json, to_jsonable_python
from temporalio import activity
from temporalio.exceptions import ApplicationError

from stepflow.activities import telemetry
from stepflow.activities.context import ToolContext, ToolError, _enter, _exit
from stepflow.activities.progress import ProgressReporter
from stepflow.activities.redaction import redact_urls
from stepflow.activities.registry import ToolDefinition
from stepflow.runtime.settings import Settings, get_settings
from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import ToolCallInput, ToolCallOutput, tool_activity_name

log = structlog.get_logger("stepflow.tool")


class ToolRequestTooLarge(ToolError):
    """Arguments larger, as JSON, than the tool accepts; the tool does not run."""

    def __init__(self, tool: str, size: int, limit: int) -> None:
        super().__init__(
            f"the arguments of tool {tool!r} are {size:,} bytes as JSON, over its limit of "
            f"{limit:,} (max_request_bytes of its @tool, else STEPFLOW_TOOL_MAX_REQUEST_BYTES)",
            non_retryable=True,
        )
        self.size = size
        self.limit = limit


class ToolOutputTooLarge(ToolError):
    """A result larger, as JSON, than the tool may return. Not retried: it would be again."""

    def __init__(self, tool: str, size: int, limit: int) -> None:
        super().__init__(
            f"the result of tool {tool!r} is {size:,} bytes as JSON, over its limit of "
            f"{limit:,} (max_output_bytes of its @tool, else STEPFLOW_TOOL_MAX_OUTPUT_BYTES): "
            "return less, e.g. write it to a file and return the path",
            non_retryable=True,
        )
        self.size = size
        self.limit = limit


class ToolActivities:
    """The activities of a worker's tools, one per tool, with what they need."""

    def __init__(
        self,
        tools: list[ToolDefinition],
        progress: ProgressReporter | None = None,
        settings: Callable[[], Settings] = get_settings,
    ) -> None:
        """The activities of `tools`, reporting retries through `progress`.

        Args:
            tools: The tools to serve.
            progress: Tells a pipeline when one of its tool calls is retried (None: nobody).
            settings: Where each call reads the settings (size limits, content logging) from;
                by default the environment as it is at the call, so a changed limit applies
                without a restart.
        """
        self.tools = tools
        self.progress = progress
        self.settings = settings

    def activities(self) -> list[Callable[..., Any]]:
        """Every tool's activity, for `Worker(activities=...)`."""
        return [self.activity(defn) for defn in self.tools]

    def activity(self, defn: ToolDefinition) -> Callable[..., Any]:
        """The activity that runs `defn`, registered as `tool_<name>`.

        A function per tool rather than a method: each tool is an activity type
        of its own, and a bound method cannot carry a definition per tool.
        """
        name = tool_activity_name(defn.name)

        if defn.is_async:

            async def run_async(call: ToolCallInput) -> ToolCallOutput:
                return await self.call_async(defn, call)

            return activity.defn(name=name)(run_async)

        def run_sync(call: ToolCallInput) -> ToolCallOutput:
            started = time.monotonic()
            kwargs, token = self._start(defn, call)
            try:
                result = defn.fn(**kwargs)
            except Exception as err:
                raise self._failure(defn, err, started) from err
            finally:
                _exit(token)
            return self._finish(defn, result, started)

        return activity.defn(name=name)(run_sync)

    async def call_async(self, defn: ToolDefinition, call: ToolCallInput) -> ToolCallOutput:
        """One call of an async tool, inside its activity: checked, run, its result checked.

        Also what a dynamic activity runs for a tool found at call time (an MCP server's).
        """
        started = time.monotonic()
        kwargs, token = self._start(defn, call)
        try:
            result = await defn.fn(**kwargs)
        except Exception as err:
            raise self._failure(defn, err, started) from err
        finally:
            _exit(token)
        return self._finish(defn, result, started)

    def _start(self, defn: ToolDefinition, call: ToolCallInput) -> tuple[dict[str, Any], Any]:
        info = activity.info()
        structlog.contextvars.clear_contextvars()  # sync tools share pool threads
        structlog.contextvars.bind_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            step_id=call.step_id,
            tool=defn.name,
            attempt=info.attempt,
        )
        if self.progress is not None:
            self.progress.report_retry(call.step_id, call.report_to)
        telemetry.tool_call_started(call.step_id, defn.name, info.attempt)
        settings = self.settings()
        limit = defn.request_limit(settings)
        size = _size_over(call.args, limit)
        if size is not None:  # before validation: a huge request never reaches pydantic or the tool
            log.warning("tool call refused: arguments too large", bytes=size, limit=limit)
            raise _refuse(
                ErrorType.TOOL_REQUEST_TOO_LARGE, ToolRequestTooLarge(defn.name, size, limit)
            )
        try:
            kwargs = defn.validate_args(call.args)
        except ValidationError as err:
            raise ErrorType.TOOL_ARGUMENTS_INVALID.error(
                f"arguments of tool {defn.name!r} do not match its schema: {err}",
                {"attempt": info.attempt},
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
        if settings.log_content:  # arguments may be private: only when asked for
            log.info("tool call started", args=call.args)
        else:
            # At debug: the line that ends the call says how long it took; an info line at
            # each start cost half a millisecond a call (bench/overhead.py --mode product).
            log.debug("tool call started")
        return kwargs, token

    def _finish(self, defn: ToolDefinition, result: Any, started: float) -> ToolCallOutput:
        try:
            output = to_jsonable_python(result)
        except PydanticSerializationError as err:
            raise ErrorType.TOOL_OUTPUT_NOT_SERIALIZABLE.error(
                f"tool {defn.name!r} returned a value that cannot be stored as JSON: {err}",
                {"attempt": activity.info().attempt},
            ) from None
        settings = self.settings()
        limit = defn.output_limit(settings)
        size = _size_over(output, limit)
        if size is not None:
            error = _refuse(
                ErrorType.TOOL_OUTPUT_TOO_LARGE, ToolOutputTooLarge(defn.name, size, limit)
            )
            telemetry.tool_call_ended(defn.name, started, error)
            log.warning("tool call failed", error_type=error.type, bytes=size, limit=limit)
            raise error
        telemetry.tool_call_ended(defn.name, started)
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        if settings.log_content:
            log.info("tool call succeeded", duration_ms=duration_ms, output=output)
        else:
            log.info("tool call succeeded", duration_ms=duration_ms)
        return ToolCallOutput(output=output, attempt=activity.info().attempt)

    @staticmethod
    def _failure(defn: ToolDefinition, err: Exception, started: float) -> ApplicationError:
        attempt = activity.info().attempt
        telemetry.tool_call_ended(defn.name, started, err)
        log.warning(
            "tool call failed",
            error_type=type(err).__name__,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        if isinstance(err, ApplicationError):
            return err
        message = redact_urls(str(err))
        if message != str(err):
            # The exception is this failure's cause, and goes into history too: say it safely.
            err.args = (message,)
        return ApplicationError(
            message or type(err).__name__,
            {"attempt": attempt},
            type=type(err).__name__,
            non_retryable=isinstance(err, ToolError) and err.non_retryable,
        )


def _refuse(error_type: ErrorType, err: ToolError) -> ApplicationError:
    """A tool call refused for good, never run (again)."""
    return error_type.error(str(err), {"attempt": activity.info().attempt})


def _size_over(value: Any, limit: int) -> int | None:
    """The bytes of `value` as compact JSON if more than `limit`, else None."""
    if isinstance(value, str) and len(value) * 6 + 2 <= limit:  # \uXXXX is the widest escape
        return None  # surely fits: no need to encode the common big value
    size = len(to_json(value))
    return size if size > limit else None
