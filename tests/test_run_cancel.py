"""Cancelling (and terminating) a whole run with the Temporal client's own calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError, TerminatedError

from stepflow.client.api import PipelineError, StepflowClient
from stepflow.workflows.control import PAUSE, RunStatus
from stepflow.workflows.models import StepStatus
from tests.support.control_tools import (
    HEARTBEAT,
    Gate,
    approval,
    events_of,
    eventually,
    gate_step,
    history,
    of_type,
    one_line,
    scheduled_activity_steps,
    status,
    wait_cancelled,
    wait_started,
    wait_step,
)
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, tool_calls
from tests.support.tools import journal_read


async def closed_as(
    handle: WorkflowHandle[Any, Any], expected: WorkflowExecutionStatus
) -> WorkflowExecutionStatus | None:
    async def probe() -> WorkflowExecutionStatus | None:
        return (await handle.describe()).status

    return await eventually(probe, lambda s: s is expected, f"workflow {expected.name}")


async def test_cancelling_the_run_cancels_tools_and_children_and_starts_nothing(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
) -> None:
    tool_gate, agent_gate = Gate(journal, tmp_path, "tool"), Gate(journal, tmp_path, "agent")
    model_server.play(tool_calls(("control_gate", agent_gate.args())))
    spec = pipeline(
        step("done", "echo", args={"value": "early"}),
        gate_step("tool", tool_gate, depends_on=["done"]),
        agent("writer", tools=["control_gate"], tool_timeout=HEARTBEAT, depends_on=["done"]),
        step("later", "record", args={"journal": journal}, depends_on=["tool"]),
        step("last", "echo", depends_on=["writer", "later"]),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "tool", "writer", handle=handle)

    await handle.cancel()

    await closed_as(handle, WorkflowExecutionStatus.CANCELED)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    with pytest.raises(PipelineError):
        await stepflow.get_result(run.workflow_id)

    # The tool and the agent's tool heard of it through their heartbeats.
    await wait_cancelled(journal, "tool", "writer")
    child = temporal_client.get_workflow_handle(f"{run.workflow_id}/writer")
    await closed_as(child, WorkflowExecutionStatus.CANCELED)

    # The record of the closed run says which steps had completed.
    state = await status(handle)
    assert state.status is RunStatus.CANCELLED and state.finished
    assert {r.id: r.status for r in state.steps} == {
        "done": StepStatus.SUCCEEDED,
        "tool": StepStatus.CANCELLED,
        "writer": StepStatus.CANCELLED,
        "later": StepStatus.SKIPPED,
        "last": StepStatus.SKIPPED,
    }
    assert state.step("done").output == "early"

    # Nothing started after the cancel.
    assert sorted(scheduled_activity_steps(await history(handle))) == ["done", "tool"]
    assert not events_of(journal_read(journal), "later", "start")
    assert len(model_server.requests) == 1 and not model_server.unexpected


async def test_cancelling_a_run_waiting_for_approval(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        step("a", "echo"),
        approval("sign", timeout="1h", depends_on=["a"]),
        step("b", "echo", depends_on=["sign"]),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "sign", "WAITING")

    await handle.cancel()
    await closed_as(handle, WorkflowExecutionStatus.CANCELED)

    state = await status(handle)
    assert state.status is RunStatus.CANCELLED
    assert state.step("a").status is StepStatus.SUCCEEDED
    assert state.step("sign").status is StepStatus.CANCELLED
    assert state.step("b").status is StepStatus.SKIPPED
    events = await history(handle)
    assert of_type(events, EventType.EVENT_TYPE_TIMER_CANCELED)  # the approval's timer too


async def test_cancelling_a_paused_run(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "a")
    spec = pipeline(gate_step("a", gate), step("b", "echo", depends_on=["a"]))
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "a", handle=handle)
    one_line(await handle.execute_update(PAUSE))
    gate.open()
    await wait_step(handle, "a", "SUCCEEDED")  # paused, nothing running, b ready

    await handle.cancel()
    await closed_as(handle, WorkflowExecutionStatus.CANCELED)
    state = await status(handle)
    assert state.status is RunStatus.CANCELLED
    assert state.step("a").status is StepStatus.SUCCEEDED
    assert state.step("b").status in (StepStatus.SKIPPED, StepStatus.CANCELLED)
    assert scheduled_activity_steps(await history(handle)) == ["a"]


async def test_terminate_forces_the_run_to_end(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    spec = pipeline(gate_step("a", Gate(journal, tmp_path, "a")), approval("sign"))
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "a", handle=handle)
    await wait_step(handle, "sign", "WAITING")

    await handle.terminate(reason="stuck")
    await closed_as(handle, WorkflowExecutionStatus.TERMINATED)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, TerminatedError)
    with pytest.raises(PipelineError):
        await stepflow.get_result(run.workflow_id)
