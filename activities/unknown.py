"""The activity a worker runs for a type it does not have: a tool missing from its modules.

Without it, Temporal's worker fails such a task with `NotFoundError: Activity
function tool_x ... is not registered on this worker`, a retryable error: the
step burns its attempts, then fails with a message that names no fix. The
usual cause is a tool module the client loads (STEPFLOW_TOOL_MODULES where
`stepflow run` ran) but the worker does not. So the call fails on its first
attempt, naming the tool, the task queue, what the worker has, and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio import activity
from temporalio.common import RawValue

from stepflow.workflows.errors import ErrorType

TOOL_PREFIX = "tool_"


class UnknownActivities:
    """The dynamic activity of a worker: refuses, at once and clearly, what it cannot run."""

    def __init__(self, task_queue: str, tools: Sequence[str]) -> None:
        """The refusals of one worker.

        Args:
            task_queue: The queue this worker serves, for the message.
            tools: The tools it has.
        """
        self.task_queue = task_queue
        self.tools = sorted(tools)

    @activity.defn(dynamic=True)
    async def unknown_activity(self, _args: Sequence[RawValue]) -> None:
        """Fail for good: another attempt on a worker like this one cannot find it either."""
        kind = activity.info().activity_type
        attempt = {"attempt": activity.info().attempt}
        if kind.startswith(TOOL_PREFIX):
            tool = kind.removeprefix(TOOL_PREFIX)
            has = ", ".join(self.tools[:20]) + (", ..." if len(self.tools) > 20 else "")
            raise ErrorType.TOOL_NOT_REGISTERED.error(
                f"tool {tool!r} is not registered on the worker of task queue "
                f"{self.task_queue!r} (it has: {has or 'none'}). Add the module that defines "
                "it to STEPFLOW_TOOL_MODULES where the worker runs (a stepflow.toml both read "
                "keeps client and worker alike) and restart the worker",
                attempt,
            )
        raise ErrorType.TOOL_NOT_REGISTERED.error(
            f"activity type {kind!r} is not one a Stepflow worker of task queue "
            f"{self.task_queue!r} runs",
            attempt,
        )
