"""SIGKILL the worker or the server mid-run: the run still ends as an undisturbed one would.

Each test runs a pipeline through a crash and then the same pipeline undisturbed, and checks
that every step's output matches, that steps completed before the crash ran exactly once (the
tools journal every execution, from every process), and that the call that was interrupted got
the same idempotency key on its retry.

A worker dies with the workflow tasks of its runs on its sticky queue: the server hands them to
another worker after the sticky timeout (10 s), which is most of these tests' runtime.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import PipelineSpec, PipelineStatus, StepStatus
from tests.support.crash import (
    FileBackedServer,
    has,
    outputs,
    reference_run,
    sigkill,
    starts,
    wait_for_heartbeat,
    wait_for_journal,
)
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import TEST_API_KEY, ScriptedModelServer, hang, text, tool_calls
from tests.support.processes import tool_worker_env
from tests.support.tools import journal_read
from tests.support.waiting import wait_until
from tests.support.worker_processes import run_through_worker_crash, running_worker, worker_crash

JOURNAL = {"journal": {"type": "string"}}
"""Every pipeline here takes its journal as an input, so the calm run journals apart."""


def counting_pipeline(hold_at: int = 10) -> PipelineSpec:
    """Two quick steps, a long resumable one (it holds at `hold_at` on attempt 1 while
    `<journal>.hold` exists), and one that uses its output."""
    return pipeline(
        step("first", "record", args={"journal": "{{ inputs.journal }}", "value": 1}),
        step(
            "second",
            "record_sync",
            args={"journal": "{{ inputs.journal }}", "value": 2},
            depends_on=["first"],
        ),
        step(
            "long",
            "count_up",
            args={
                "journal": "{{ inputs.journal }}",
                "items": 20,
                "hold_at": hold_at,
                "hold_while": "{{ inputs.journal }}.hold",
            },
            depends_on=["second"],
            # A lost attempt is noticed 1 s after its last heartbeat, retried 100 ms later.
            timeout={"heartbeat": "1s"},
            retry={"initial_interval": "100ms"},
        ),
        step(
            "last",
            "record",
            args={"journal": "{{ inputs.journal }}", "value": "{{ steps.long.output }}"},
            depends_on=["long"],
        ),
        inputs=JOURNAL,
    )


def assert_resumed(journal: str, step_id: str, held_at: int, items: int) -> list[dict[str, Any]]:
    """Attempt 2 picked up at the heartbeat `held_at` with attempt 1's key: every item once."""
    entries = [e for e in journal_read(journal) if e["step"] == step_id]
    runs = [e for e in entries if e["event"] == "start"]
    assert [(e["attempt"], e["resume_from"]) for e in runs] == [(1, 0), (2, held_at)]
    assert runs[0]["key"] == runs[1]["key"]  # the retry carries the same idempotency key
    done = [(e["attempt"], e["item"]) for e in entries if e["event"] == "item"]
    assert done == [(1, i) for i in range(held_at)] + [(2, i) for i in range(held_at, items)]
    return runs


async def test_worker_killed_mid_tool_step_and_a_new_worker_finishes_the_run(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    env = tool_worker_env(temporal_env.client.service_client.config.target_host, task_queue)
    spec = counting_pipeline(hold_at=8)
    Path(f"{journal}.hold").touch()

    async with worker_crash(
        stepflow,
        env,
        tmp_path,
        spec,
        {"journal": journal},
        # Kill once the server holds the progress: items 0..7 done, 8 next.
        kill_when=lambda workflow_id: wait_for_heartbeat(
            stepflow.temporal, workflow_id, {"next": 8, "sum": 28}
        ),
    ) as crash:
        calm = await reference_run(stepflow, spec, {"journal": str(tmp_path / "calm.jsonl")})

    result = crash.result
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert outputs(result) == outputs(calm)
    assert result.output("last") == {"items": 20, "sum": sum(range(20))}
    # Completed steps ran exactly once; only the interrupted one ran again, from its heartbeat.
    assert starts(journal) == {"first": 1, "second": 1, "long": 2, "last": 1}
    runs = assert_resumed(journal, "long", held_at=8, items=20)
    assert [e["pid"] for e in runs] == [crash.doomed.pid, crash.rescuer.pid]
    assert result.step("long").attempts == 2
    assert crash.rescuer.returncode == 0  # and SIGTERM shut the new worker down cleanly


async def test_worker_killed_during_a_model_call_and_the_call_is_made_again(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    spec = pipeline(
        step("prep", "record", args={"journal": "{{ inputs.journal }}", "value": "the facts"}),
        agent(
            "think",
            input="{{ steps.prep.output }}",
            depends_on=["prep"],
            # The call heartbeats while it waits: on a dead worker it is retried after 1 s,
            # not after its 5 minute start-to-close.
            model_timeout={"heartbeat": "1s"},
            model_retry={"initial_interval": "100ms"},
        ),
        step(
            "after",
            "record",
            args={"journal": "{{ inputs.journal }}", "value": "{{ steps.think.output }}"},
            depends_on=["think"],
        ),
        inputs=JOURNAL,
    )
    with ScriptedModelServer() as model:
        env = tool_worker_env(
            temporal_env.client.service_client.config.target_host,
            task_queue,
            OPENAI_BASE_URL=model.base_url,
            OPENAI_API_KEY=TEST_API_KEY,
        )
        # The first call never gets an answer; its retry, and the calm run's call, do.
        model.play(hang(60), text("the answer"), text("the answer"))
        async with worker_crash(
            stepflow,
            env,
            tmp_path,
            spec,
            {"journal": journal},
            kill_when=lambda _: wait_until(
                lambda: len(model.requests) == 1, "the model call to arrive"
            ),
        ) as crash:
            retried = model.requests
            calm = await reference_run(stepflow, spec, {"journal": str(tmp_path / "calm.jsonl")})

    result = crash.result
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert outputs(result) == outputs(calm)
    assert result.output("after") == "the answer"
    # The hung call was made once more, exactly as before; nothing else ran again.
    assert len(retried) == 2 and not model.unexpected
    assert retried[1].messages == retried[0].messages
    assert "the facts" in retried[1].text
    assert starts(journal) == {"prep": 1, "after": 1}
    usage = result.step("think").usage
    assert usage is not None and usage.model_calls == 1  # only the answered call counts


async def test_worker_killed_between_steps_and_a_new_worker_goes_on_from_there(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    """Killed with nothing in flight: `first` is done and recorded, `second` not started.

    An approval between them holds the run at that point until the test decides, so the kill
    cannot race the next step's start.
    """
    env = tool_worker_env(temporal_env.client.service_client.config.target_host, task_queue)
    spec = pipeline(
        step("first", "record", args={"journal": "{{ inputs.journal }}", "value": 1}),
        {"id": "gate", "kind": "approval", "depends_on": ["first"]},
        step(
            "second",
            "record_sync",
            args={"journal": "{{ inputs.journal }}", "value": "{{ steps.first.output }}"},
            depends_on=["first", "gate"],
        ),
        inputs=JOURNAL,
    )

    async def run_through(inputs: dict[str, Any], crash: bool) -> str:
        run = await stepflow.start_pipeline(spec, inputs)

        async def gate_waits() -> bool:
            state = await stepflow.status(run.workflow_id)
            return next(r for r in state.steps if r.id == "gate").status is StepStatus.WAITING

        await wait_until(gate_waits, "the gate to wait")
        if crash:
            assert journal_read(journal) and starts(journal) == {"first": 1}
            sigkill(doomed)
        return run.workflow_id

    async with running_worker(env, tmp_path / "worker-1.log") as doomed:
        workflow_id = await run_through({"journal": journal}, crash=True)

    async with running_worker(env, tmp_path / "worker-2.log") as rescuer:
        # The run's tasks reach the new worker only after the dead one's sticky timeout (10 s).
        stepflow.update_timeout = timedelta(seconds=60)
        await stepflow.approve(workflow_id, "gate")  # answered by the new worker
        result = await stepflow.get_result(workflow_id)
        calm_id = await run_through({"journal": str(tmp_path / "calm.jsonl")}, crash=False)
        await stepflow.approve(calm_id, "gate")
        calm = await stepflow.get_result(calm_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert outputs(result) == outputs(calm)
    assert starts(journal) == {"first": 1, "second": 1}
    by = {e["step"]: e["pid"] for e in journal_read(journal) if e["event"] == "start"}
    assert by == {"first": doomed.pid, "second": rescuer.pid}


async def test_server_killed_mid_run_and_restarted_on_its_file_the_run_completes(
    settings: Settings, task_queue: str, journal: str, tmp_path: Path
) -> None:
    """SIGKILL the file-backed dev server while a tool runs, after two steps completed.

    The worker stays up through the outage and reconnects by itself. Down for longer than the
    tool's heartbeat timeout, the server times the attempt out when it comes back; the worker
    then runs attempt 2, which resumes from the heartbeat the server held.
    """
    spec = counting_pipeline(hold_at=10)
    Path(f"{journal}.hold").touch()
    with FileBackedServer(tmp_path / "server") as server:
        await server.start()
        client = await server.connect()
        stepflow = StepflowClient(client, settings=settings)
        env = tool_worker_env(server.address, task_queue)
        async with running_worker(env, tmp_path / "worker.log") as worker:
            run = await stepflow.start_pipeline(spec, {"journal": journal})
            await wait_for_heartbeat(client, run.workflow_id, {"next": 10, "sum": 45})
            server.kill()
            await asyncio.sleep(3)  # the outage: the worker's polls and heartbeats fail meanwhile
            await server.restart()
            await wait_for_journal(journal, has("start", "long", attempt=2))
            result = await stepflow.get_result(run.workflow_id)
            assert worker.poll() is None, "the worker did not survive the outage"
            calm = await reference_run(stepflow, spec, {"journal": str(tmp_path / "calm.jsonl")})

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert outputs(result) == outputs(calm)
    assert starts(journal) == {"first": 1, "second": 1, "long": 2, "last": 1}
    runs = assert_resumed(journal, "long", held_at=10, items=20)
    assert runs[0]["pid"] == runs[1]["pid"] == worker.pid  # the same worker, reconnected
    assert server.starts == 2
    assert worker.returncode == 0


async def test_server_and_worker_killed_together_and_both_restarted_the_run_completes(
    settings: Settings, task_queue: str, journal: str, tmp_path: Path
) -> None:
    """The machine goes down: server and worker die at once; both come back on the same file.

    The server times the lost attempt out when it comes back and the new worker runs attempt
    2 from the last heartbeat the server held.
    """
    spec = counting_pipeline(hold_at=10)
    Path(f"{journal}.hold").touch()
    with FileBackedServer(tmp_path / "server") as server:
        await server.start()
        client = await server.connect()
        stepflow = StepflowClient(client, settings=settings)
        env = tool_worker_env(server.address, task_queue)
        async with running_worker(env, tmp_path / "worker-1.log") as doomed:
            run = await stepflow.start_pipeline(spec, {"journal": journal})
            await wait_for_heartbeat(client, run.workflow_id, {"next": 10, "sum": 45})
            sigkill(doomed)
            server.kill()
        await server.restart()
        async with running_worker(env, tmp_path / "worker-2.log") as rescuer:
            result = await stepflow.get_result(run.workflow_id)
            calm = await reference_run(stepflow, spec, {"journal": str(tmp_path / "calm.jsonl")})

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert outputs(result) == outputs(calm)
    assert starts(journal) == {"first": 1, "second": 1, "long": 2, "last": 1}
    runs = assert_resumed(journal, "long", held_at=10, items=20)
    assert [e["pid"] for e in runs] == [doomed.pid, rescuer.pid]


async def test_agent_step_resumes_the_conversation_after_its_worker_is_killed(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    with ScriptedModelServer() as model:
        env = tool_worker_env(
            temporal_env.client.service_client.config.target_host,
            task_queue,
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
        crash = await run_through_worker_crash(
            stepflow,
            env,
            tmp_path,
            spec,
            # Once the tool runs.
            kill_when=lambda _: wait_for_journal(journal, lambda entries: len(entries) >= 1),
        )

    record = crash.result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.output == "done after the crash"
    # The first model call was not made again: the conversation came back from history.
    assert len(model.requests) == 2 and not model.unexpected
    assert model.requests[1].messages[-1]["content"] == "finished on attempt 2"
    runs = [e for e in journal_read(journal) if e["event"] == "start"]
    assert [e["attempt"] for e in runs] == [1, 2]
    assert runs[0]["key"] == runs[1]["key"]
