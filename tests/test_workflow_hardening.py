"""The workflow core under stress: tightened models, long drains, large outputs, slow models.

The module runs its own dev server whose continue-as-new suggestion comes after
`SUGGEST_AT` events, so a short DAG drains and hands over mid-run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import to_json
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import PipelineStatus, StepStatus
from stepflow.workflows.pipeline import PIPELINE_WORKFLOW
from tests.support.control_tools import Gate, eventually, gate_step, history, of_type, status
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, hang
from tests.support.servers import suggesting_continue_as_new_at
from tests.support.tools import journal_read

SUGGEST_AT = 100
"""History length at which this module's server suggests continuing as new."""


@pytest.fixture(scope="module")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """Overrides the session's server for this module: one that suggests continuing early."""
    async with suggesting_continue_as_new_at(SUGGEST_AT) as env:
        yield env


async def test_a_state_that_no_longer_parses_waits_for_a_fixed_worker_instead_of_failing(
    worker: None, temporal_client: Client, task_queue: str
) -> None:
    """As after a deploy that tightened a model under running runs: the task retries, the run waits.

    The run below continues a chain whose carried record this worker cannot read
    (a status it does not know). Only a run's own invalid input fails it at once
    (tests/test_workflow_input.py).
    """
    spec = {"name": "tightened", "steps": [{"id": "a", "kind": "tool", "tool": "echo"}]}
    carried = {
        "started_at": "2026-01-01T00:00:00Z",
        "records": [{"id": "a", "kind": "tool", "status": "STATUS_OF_A_NEWER_WORKER"}],
    }
    handle = await temporal_client.start_workflow(
        PIPELINE_WORKFLOW,
        {"spec": spec, "carried": carried},
        id=f"tightened-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
    try:
        await eventually(
            lambda: history(handle),
            lambda events: bool(of_type(events, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)),
            "a failed workflow task",
        )
        description = await handle.describe()
        assert description.status is WorkflowExecutionStatus.RUNNING
    finally:
        await handle.terminate("test over")


async def test_ready_steps_of_other_branches_start_while_a_long_step_holds_the_hand_over(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    """One slow step and a chain of fast ones: the chain ends while the slow step still runs."""
    length = 40  # some 6 events a step: the suggestion comes a third of the way along
    gate = Gate(journal, tmp_path, "slow")
    chain = [
        step(
            f"c{i}",
            "record",
            args={"journal": journal, "value": i},
            depends_on=[f"c{i - 1}"] if i else [],
        )
        for i in range(length)
    ]
    spec = pipeline(gate_step("slow", gate, value="done"), *chain)
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)

    state = await eventually(
        lambda: status(handle),
        lambda s: s.step(f"c{length - 1}").status is StepStatus.SUCCEEDED,
        "the fast chain to finish",
        timeout=60,
    )
    assert state.step("slow").status is StepStatus.RUNNING  # the gate is still closed
    events = await history(handle)
    assert len(events) > SUGGEST_AT  # the chain went on past the suggestion

    gate.open()
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert [result.output(f"c{i}") for i in range(length)] == list(range(length))
    started = [e["step"] for e in journal_read(journal) if e["event"] == "start"]
    assert sorted(started) == sorted(["slow", *(f"c{i}" for i in range(length))])  # each once


STATUS_BOUND = 1_000_000


async def test_the_status_answer_stays_small_however_large_the_outputs(
    worker: None, temporal_client: Client, settings: Settings, journal: str
) -> None:
    """Three outputs of 600 kB: `status` summarises them under 1 MB, the result has them whole.

    Without a payload store, that is: with one, the answer is stored as any large
    payload is, and the client reads it back whole (tests/test_large_outputs.py).
    """
    stepflow = StepflowClient(
        temporal_client, settings=settings.model_copy(update={"payload_store": "off"})
    )
    size = 600_000
    spec = pipeline(
        *(
            step(f"big{i}", "big_text", args={"journal": journal, "size": size, "seed": str(i)})
            for i in range(3)
        ),
        step("small", "record", args={"journal": journal, "value": "tiny"}),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert all(len(result.output(f"big{i}")) == size for i in range(3))

    state = await stepflow.status(run.workflow_id)
    assert len(to_json(state.model_dump(mode="json"))) < STATUS_BOUND
    summary: Any = state.step("big0").output
    assert summary["$summary"] == "<600.0 kB str>"
    assert result.output("big0").startswith(summary["preview"])
    assert state.step("small").output == "tiny"  # small outputs stay whole


async def test_a_model_call_that_times_out_ends_its_step_timed_out(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    """As a tool that times out does: `TIMED_OUT`, error type `Timeout`."""
    model_server.play(hang(30))
    spec = pipeline(
        agent(
            "slow-model",
            model_retry={"max_attempts": 1},
            model_timeout={"start_to_close": "1s"},
            on_failure="continue",
        )
    )
    result = await stepflow.run_pipeline(spec)
    record = result.step("slow-model")
    assert record.status is StepStatus.TIMED_OUT
    assert record.error_type == "Timeout"
    assert record.error == "model call 1 failed: start-to-close timeout"
