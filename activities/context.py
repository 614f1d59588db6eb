"""What a running tool can know about its call: step, idempotency key, attempt, heartbeats."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio import activity


class ToolError(Exception):
    """Raise from a tool to fail the call with a clear message.

    Args:
        message: What went wrong, for the pipeline's result and the Web UI.
        non_retryable: True when another attempt cannot help (bad input, a
            missing file): the step fails at once instead of retrying.
    """

    def __init__(self, message: str, *, non_retryable: bool = False) -> None:
        super().__init__(message)
        self.non_retryable = non_retryable


@dataclass(frozen=True)
class ToolContext:
    """The current tool call, from `tool_context()` inside a tool."""

    step_id: str
    tool: str
    idempotency_key: str
    """Same on every retry of this call: pass it to APIs that deduplicate writes."""
    attempt: int
    workflow_id: str
    heartbeat_details: Sequence[Any]
    """What the previous attempt last passed to `heartbeat()`; empty on the first attempt."""

    def heartbeat(self, *details: Any) -> None:
        """Tell Temporal the tool is alive, and how far it got.

        Call it often (each item, each chunk): it is cheap, and only the newest details
        are sent, at most every 0.8 x the step's heartbeat timeout (5 s at most; every
        2 s without one). With `timeout: {heartbeat: ...}` on the step, an attempt that
        stops heartbeating (its worker died, or it hangs) is retried after that long
        instead of at `start_to_close`. A running tool also learns of a cancel only
        through a heartbeat.

        If the call is retried, the next attempt gets the details the server last
        received (`last_heartbeat()`), so a long tool can resume where it was. A tool
        that raises has its last heartbeat delivered first, however recent. Details
        travel as JSON (a pydantic model comes back as a dict) and are stored with the
        run: send progress (an offset, the ids done), not data.
        """
        activity.heartbeat(*details)

    def last_heartbeat(self, default: Any = None) -> Any:
        """The previous attempt's last heartbeat (its first detail); `default` if none.

        For example `progress = ctx.last_heartbeat({"next": 0})`.
        """
        return self.heartbeat_details[0] if self.heartbeat_details else default

    def is_cancelled(self) -> bool:
        """For sync tools: True once the step is cancelled; the tool should stop soon."""
        return activity.is_cancelled()


_current: contextvars.ContextVar[ToolContext] = contextvars.ContextVar("stepflow_tool_context")


def tool_context() -> ToolContext:
    """The context of the tool call being executed.

    Raises:
        RuntimeError: when called outside a tool call (for example in a unit test
            that calls the function directly).
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("tool_context() is only available while a tool runs as a step") from None


def _enter(context: ToolContext) -> contextvars.Token[ToolContext]:
    return _current.set(context)


def _exit(token: contextvars.Token[ToolContext]) -> None:
    _current.reset(token)
