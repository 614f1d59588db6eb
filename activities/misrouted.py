"""`model_call` on a main-queue worker whose model calls belong to a queue of their own.

A run started without the routing (a client missing `STEPFLOW_MODEL_TASK_QUEUE`,
an old schedule) sends its model calls to the main queue. Answering them there
would bypass the model queue's rate limit, and on a workflow worker without the
provider's key it would quietly use the offline model. The call fails at once,
saying why.
"""

from __future__ import annotations

from temporalio import activity

from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import MODEL_CALL_ACTIVITY, ModelCallInput, ModelCallOutput


class MisroutedModelCalls:
    """The `model_call` activity of a main-queue worker that does not serve the model queue."""

    def __init__(self, model_queue: str) -> None:
        """The refusal of calls meant for `model_queue`.

        Args:
            model_queue: Where model calls run (STEPFLOW_MODEL_TASK_QUEUE), for the message.
        """
        self.model_queue = model_queue

    @activity.defn(name=MODEL_CALL_ACTIVITY)
    async def misrouted_model_call(self, call: ModelCallInput) -> ModelCallOutput:
        """Fail the call for good, saying where it should have gone."""
        raise ErrorType.MODEL_CALL_MISROUTED.error(
            f"this model call came to the main task queue, but model calls run on "
            f"{self.model_queue!r} (STEPFLOW_MODEL_TASK_QUEUE): the run was started without "
            "that routing. Start runs with the same STEPFLOW_MODEL_TASK_QUEUE as the workers, "
            "or let a main-queue worker serve model calls too (python worker.py --serve "
            "workflows,models)",
            {"attempt": activity.info().attempt},
        )
