"""SIGKILL the worker mid-pipeline: a new worker finishes the run, completed steps run once."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from client.api import StepflowClient
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import TEST_API_KEY, ScriptedModelServer, text, tool_calls
from tests.support.processes import process_env, start_worker, wait_for_log
from tests.support.tools import journal_read
from worker import WORKER_READY_LINE
from workflows.models import PipelineStatus, StepStatus


async def test_worker_killed_mid_pipeline_and_a_new_worker_finishes_it(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_TOOL_MODULES="tests.support.tools",
    )
    spec = pipeline(
        step("first", "record", args={"journal": journal, "value": 1}),
        step("second", "record_sync", args={"journal": journal, "value": 2}, depends_on=["first"]),
        # Attempt 1 runs until the worker dies; the heartbeat timeout brings attempt 2 in 1 s.
        step(
            "long",
            "slow_heartbeat",
            args={"journal": journal, "seconds": 60},
            depends_on=["second"],
            timeout={"heartbeat": "1s"},
            retry={"initial_interval": "100ms"},
        ),
        step(
            "last",
            "record",
            args={"journal": journal, "value": "{{ steps.long.output }}"},
            depends_on=["long"],
        ),
    )

    doomed = start_worker(env, tmp_path / "worker-1.log")
    try:
        await wait_for_log(tmp_path / "worker-1.log", WORKER_READY_LINE, doomed)
        run = await stepflow.start_pipeline(spec)
        await _wait_for(journal, lambda entries: any(e["step"] == "long" for e in entries))
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    finally:
        if doomed.poll() is None:
            doomed.kill()

    rescuer = start_worker(env, tmp_path / "worker-2.log")
    try:
        result = await stepflow.get_result(run.workflow_id)
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(timeout=30)

    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("last") == "finished on attempt 2"
    entries = journal_read(journal)
    starts = Counter(e["step"] for e in entries if e["event"] == "start")
    # Completed steps ran exactly once; only the interrupted one ran again.
    assert starts == {"first": 1, "second": 1, "long": 2, "last": 1}
    long_runs = [e for e in entries if e["step"] == "long" and e["event"] == "start"]
    assert [e["attempt"] for e in long_runs] == [1, 2]
    assert long_runs[0]["pid"] == doomed.pid and long_runs[1]["pid"] == rescuer.pid
    assert long_runs[0]["key"] == long_runs[1]["key"]  # the retry carries the same idempotency key
    assert result.step("long").attempts == 2
    assert rescuer.returncode == 0  # and SIGTERM shut the new worker down cleanly


async def _wait_for(
    journal: str, condition: Callable[[list[dict[str, Any]]], bool], limit: float = 30
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition(journal_read(journal)):
        assert loop.time() < deadline, f"journal never met the condition: {journal_read(journal)}"
        await asyncio.sleep(0.05)


async def test_worker_killed_mid_agent_step_resumes_the_conversation_not_restarts_it(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    with ScriptedModelServer() as model:
        env = process_env(
            temporal_env.client.service_client.config.target_host,
            STEPFLOW_TASK_QUEUE=task_queue,
            STEPFLOW_TOOL_MODULES="tests.support.tools",
            OPENAI_BASE_URL=model.base_url,
            OPENAI_API_KEY=TEST_API_KEY,
        )
        model.play(
            tool_calls(("slow_heartbeat", {"journal": journal, "seconds": 60})),
            text("done after the crash"),
        )
        spec = pipeline(
            agent(
                "a",
                tools=["slow_heartbeat"],
                tool_timeout={"heartbeat": "1s"},
                tool_retry={"initial_interval": "100ms"},
            )
        )
        doomed = start_worker(env, tmp_path / "worker-1.log")
        try:
            await wait_for_log(tmp_path / "worker-1.log", WORKER_READY_LINE, doomed)
            run = await stepflow.start_pipeline(spec)
            await _wait_for(journal, lambda entries: len(entries) >= 1)  # the tool is running
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)
        finally:
            if doomed.poll() is None:
                doomed.kill()

        rescuer = start_worker(env, tmp_path / "worker-2.log")
        try:
            result = await stepflow.get_result(run.workflow_id)
        finally:
            rescuer.send_signal(signal.SIGTERM)
            rescuer.wait(timeout=30)

    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.output == "done after the crash"
    # The first model call was not made again: the conversation came back from history.
    assert len(model.requests) == 2 and not model.unexpected
    assert model.requests[1].messages[-1]["content"] == "finished on attempt 2"
    starts = [e for e in journal_read(journal) if e["event"] == "start"]
    assert [e["attempt"] for e in starts] == [1, 2]
    assert starts[0]["key"] == starts[1]["key"]
