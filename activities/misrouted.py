"""`model_call` on a main-queue worker whose model calls belong to a queue of their own.

A run started without the routing (a client missing `STEPFLOW_MODEL_TASK_QUEUE`,
an old schedule) sends its model calls to the main queue. Answering them there
would bypass the model queue's rate limit, and on a workflow worker without the
provider's key it would quietly use the offline model. The call fails at once,
saying why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stepflow.workflows.models import MODEL_CALL_ACTIVITY, ModelCallInput, ModelCallOutput

MISROUTED = "ModelCallMisrouted"


def refuse_model_calls(model_queue: str) -> Callable[[ModelCallInput], Awaitable[ModelCallOutput]]:
    """The `model_call` activity of a main-queue worker that does not serve `model_queue`."""

    @activity.defn(name=MODEL_CALL_ACTIVITY)
    async def misrouted_model_call(call: ModelCallInput) -> ModelCallOutput:
        raise ApplicationError(
            f"this model call came to the main task queue, but model calls run on "
            f"{model_queue!r} (STEPFLOW_MODEL_TASK_QUEUE): the run was started without that "
            "routing. Start runs with the same STEPFLOW_MODEL_TASK_QUEUE as the workers, or "
            "let a main-queue worker serve model calls too (python worker.py --serve "
            "workflows,models)",
            {"attempt": activity.info().attempt},
            type=MISROUTED,
            non_retryable=True,
        )

    return misrouted_model_call
