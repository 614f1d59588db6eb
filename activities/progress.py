"""Retried activities tell their pipeline, so its `status` query can say RETRYING (attempt N).

Temporal retries an activity on the server: the workflow that scheduled it hears
nothing until the last attempt ends. So every attempt after the first sends the
pipeline a `step_progress` signal as it starts. Fire and forget: the attempt
never waits for it, and a report that fails (the run ended meanwhile) is dropped.

Sync tools run on executor threads, where `activity.client()` is not available,
so each worker's reporter is made with the worker's client and event loop, and
handed to the activities that report (`runtime.plugin`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

import structlog
from temporalio import activity
from temporalio.client import Client

from stepflow.workflows.control import STEP_PROGRESS, StepProgress

log = structlog.get_logger("stepflow.progress")


class ProgressReporter:
    """Sends a worker's retry reports through its client, on its event loop."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """A reporter for the worker of `client`.

        Args:
            client: The worker's client.
            loop: The worker's event loop; by default the running one (build it on that loop).
        """
        self.client = client
        self.loop = loop or asyncio.get_running_loop()
        self._pending: set[Future[None]] = set()
        """Reports in flight, held so none is garbage-collected before it is sent."""

    def report_retry(
        self, step_id: str, report_to: str | None, model_call: int | None = None
    ) -> None:
        """From inside an activity: if this is a retry, tell the pipeline which attempt runs."""
        info = activity.info()
        if info.attempt <= 1 or self.loop.is_closed():
            return
        workflow_id = report_to or info.workflow_id
        if not workflow_id:
            return
        progress = StepProgress(step=step_id, attempt=info.attempt, model_call=model_call)
        client = self.client

        async def send() -> None:
            try:
                await client.get_workflow_handle(workflow_id).signal(STEP_PROGRESS, progress)
            except Exception as err:  # a courtesy, never a reason to fail the attempt
                log.debug("retry report not delivered", workflow_id=workflow_id, error=str(err))

        future = asyncio.run_coroutine_threadsafe(send(), self.loop)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
