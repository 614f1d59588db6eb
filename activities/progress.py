"""Retried activities tell their pipeline, so its `status` query can say RETRYING (attempt N).

Temporal retries an activity on the server: the workflow that scheduled it hears
nothing until the last attempt ends. So every attempt after the first sends the
pipeline a `step_progress` signal as it starts. Fire and forget: the attempt
never waits for it, and a report that fails (the run ended meanwhile) is dropped.

Sync tools run on executor threads, where `activity.client()` is not available,
so the worker installs its client and event loop here when it is built.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

import structlog
from temporalio import activity
from temporalio.client import Client

from stepflow.workflows.control import STEP_PROGRESS, StepProgress

log = structlog.get_logger("stepflow.progress")

_target: tuple[Client, asyncio.AbstractEventLoop] | None = None
_pending: set[Future[None]] = set()


def install(client: Client) -> None:
    """Send reports through this client, on the running event loop (the worker's)."""
    global _target
    _target = (client, asyncio.get_running_loop())


def report_retry(step_id: str, report_to: str | None, model_call: int | None = None) -> None:
    """From inside an activity: if this is a retry, tell the pipeline which attempt is running."""
    info = activity.info()
    if info.attempt <= 1 or _target is None:
        return
    client, loop = _target
    if loop.is_closed():
        return
    workflow_id = report_to or info.workflow_id
    if not workflow_id:
        return
    progress = StepProgress(step=step_id, attempt=info.attempt, model_call=model_call)

    async def send() -> None:
        try:
            await client.get_workflow_handle(workflow_id).signal(STEP_PROGRESS, progress)
        except Exception as err:  # a courtesy, never a reason to fail the attempt
            log.debug("retry report not delivered", workflow_id=workflow_id, error=str(err))

    future = asyncio.run_coroutine_threadsafe(send(), loop)
    _pending.add(future)
    future.add_done_callback(_pending.discard)
