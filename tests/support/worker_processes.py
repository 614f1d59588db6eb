"""`python worker.py` processes a test starts, and the crash-and-rescue every crash test runs.

A test that SIGKILLs a worker mid-run always does the same five things: start a worker and
wait until it serves, start the run, wait for the moment to crash, SIGKILL the worker, and let
a second worker finish the run. Written out each time, that is a dozen lines of try/finally
per test in which the one line that differs (the moment of the crash) is easy to miss; here
it is one call that names that moment.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepflow.client.api import StepflowClient
from stepflow.worker import WORKER_READY_LINE
from stepflow.workflows.models import PipelineResult, PipelineSpec
from tests.support.crash import sigkill, stop_worker
from tests.support.processes import start_worker, wait_for_log

Worker = subprocess.Popen[bytes]


@asynccontextmanager
async def running_worker(
    env: dict[str, str], log: Path, *, ready_timeout: float = 30
) -> AsyncIterator[Worker]:
    """`python worker.py` serving with `env`, once its ready line is in `log`; stopped on exit.

    Waiting for the ready line means a run the test starts next is picked up at once, and a
    worker that dies at start fails the test with its log rather than with a run that never
    ends. On exit it is sent SIGTERM (SIGKILL if it lingers), so its `returncode` says
    whether it shut down cleanly.
    """
    worker = start_worker(env, log)
    try:
        await wait_for_log(log, WORKER_READY_LINE, worker, timeout=ready_timeout)
        yield worker
    finally:
        stop_worker(worker)


@dataclass
class WorkerCrash:
    """A run that lost its first worker to SIGKILL and was finished by a second one."""

    workflow_id: str
    result: PipelineResult
    doomed: Worker
    """The worker that was killed (its pid is in the journal entries it wrote)."""
    rescuer: Worker
    """The worker that finished the run; its `returncode` is set once it has been stopped."""


CrashPoint = Callable[[str], Awaitable[object]]
"""Given the run's workflow id, return once the worker is to be killed."""


@asynccontextmanager
async def worker_crash(
    stepflow: StepflowClient,
    env: dict[str, str],
    logs: Path,
    spec: PipelineSpec,
    inputs: dict[str, Any] | None = None,
    *,
    kill_when: CrashPoint,
) -> AsyncIterator[WorkerCrash]:
    """Run `spec` on a worker that is SIGKILLed at `kill_when`; a second worker finishes it.

    In order: worker 1 starts (log `logs/worker-1.log`) and is ready, the run starts,
    `kill_when(workflow_id)` returns, worker 1 is SIGKILLed, worker 2 starts
    (`logs/worker-2.log`), and the run's result is awaited. The body runs while worker 2
    still serves the queue (for a calm reference run on the same worker); it is stopped on
    exit.
    """
    async with running_worker(env, logs / "worker-1.log") as doomed:
        run = await stepflow.start_pipeline(spec, inputs)
        await kill_when(run.workflow_id)
        sigkill(doomed)
    async with running_worker(env, logs / "worker-2.log") as rescuer:
        result = await stepflow.get_result(run.workflow_id)
        yield WorkerCrash(run.workflow_id, result, doomed, rescuer)


async def run_through_worker_crash(
    stepflow: StepflowClient,
    env: dict[str, str],
    logs: Path,
    spec: PipelineSpec,
    inputs: dict[str, Any] | None = None,
    *,
    kill_when: CrashPoint,
) -> WorkerCrash:
    """`worker_crash` with nothing more to do on the second worker: both are stopped on return."""
    async with worker_crash(stepflow, env, logs, spec, inputs, kill_when=kill_when) as crash:
        return crash
