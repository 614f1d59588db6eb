"""Noticing a run that no worker serves, so a waiting command says so instead of hanging silently.

A run started on a task queue that no worker polls (a typo in STEPFLOW_TASK_QUEUE,
`stepflow dev stop`, a crashed worker) is accepted by Temporal and simply waits.
That is right (it goes on when a worker comes), but a user watching `stepflow
run` must learn within seconds that nothing is happening, and what to start.

The sign read here is the run's pending workflow task: scheduled, and not
picked up by any worker for a few seconds. It covers a queue with no worker at
all and one whose workers are gone but still listed by the server for a while.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.service import RPCError

NOTICE_AFTER_SECONDS = 3.0
"""A workflow task normally starts within milliseconds; 3 s waiting means nobody is polling."""

CHECK_EVERY_SECONDS = 1.0


def unserved_message(task_queue: str, seconds: float) -> str:
    return (
        f"no worker has picked this run up for {seconds:.0f} s: is a worker polling task "
        f"queue {task_queue!r}? Start one (`stepflow dev start`, or `python worker.py` with "
        f"STEPFLOW_TASK_QUEUE={task_queue}); the run waits and goes on when one comes"
    )


async def unserved_for(client: Client, workflow_id: str) -> tuple[str, float] | None:
    """The run's task queue and how long its workflow task has waited for a worker, if it has.

    None when a worker has the run, the run is not waiting for one, or the server did not say.
    """
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return None
    return _waiting(description)


def _waiting(description: WorkflowExecutionDescription) -> tuple[str, float] | None:
    raw = description.raw_description
    if not raw.HasField("pending_workflow_task"):
        return None
    pending = raw.pending_workflow_task
    if pending.state != PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED:
        return None
    scheduled = pending.original_scheduled_time.ToDatetime(tzinfo=UTC)
    waited = (datetime.now(UTC) - scheduled).total_seconds()
    return raw.execution_config.task_queue.name, waited


async def warn_while_unserved(
    client: Client,
    workflow_id: str,
    say: Callable[[str], None],
    *,
    after: float = NOTICE_AFTER_SECONDS,
    every: float = CHECK_EVERY_SECONDS,
) -> None:
    """Say once when the run waits for a worker, and again once one has picked it up.

    Runs until the run closes or the caller cancels it (when the result arrives).
    """
    handle = client.get_workflow_handle(workflow_id)
    warned = False
    while True:
        await asyncio.sleep(every)
        try:
            description = await handle.describe()
        except RPCError:
            continue
        waiting = _waiting(description)
        if waiting is not None and waiting[1] >= after and not warned:
            say(unserved_message(*waiting))
            warned = True
        elif waiting is None and warned:
            say("a worker has picked the run up")
            warned = False
        if description.status != WorkflowExecutionStatus.RUNNING:
            return
