"""Pause and cancel inside for_each, loops and sub-pipelines, against the real dev server.

Pause stops new instances and iterations (what runs finishes); `cancel_step` on a
for_each, loop or sub-pipeline step cancels everything under it, and the step ends
CANCELLED with its `on_failure` applied. Steps hold on `control_gate` until the test
opens their gate, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.control_tools import Gate, gate_step, wait_journal
from tests.support.helpers import pipeline, step
from tests.support.tools import journal_read


def events(journal: str, event: str) -> int:
    return sum(1 for e in journal_read(journal) if e["event"] == event)


async def wait_events(journal: str, event: str, count: int) -> None:
    await wait_journal(
        journal,
        lambda entries: sum(e["event"] == event for e in entries) >= count,
        f"{count} {event} events",
    )


def gated_for_each(journal: str, gates: list[Gate], **fields: Any) -> list[dict[str, Any]]:
    """`each`: one control_gate instance per gate, then `after`."""
    gate = gates[0]
    return [
        step("plan", "echo", args={"value": [str(g.path) for g in gates]}),
        gate_step(
            "each",
            gate,
            depends_on=["plan"],
            for_each="{{ steps.plan.output }}",
            **fields,
        )
        | {"args": {**gate.args("{{ index }}"), "release": "{{ item }}"}},
        step("after", "echo", depends_on=["each"], args={"value": "{{ steps.each.output }}"}),
    ]


async def child_status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    return (await client.get_workflow_handle(workflow_id).describe()).status


async def test_cancel_step_on_a_for_each_cancels_its_running_instances(
    worker: None, stepflow: StepflowClient, journal: str, tmp_path: Path
) -> None:
    gates = [Gate(journal, tmp_path, f"g{i}") for i in range(3)]
    spec = pipeline(*gated_for_each(journal, gates, max_concurrency=2, on_failure="continue"))
    run = await stepflow.start_pipeline(spec)
    await wait_events(journal, "start", 2)

    await stepflow.cancel_step(run.workflow_id, "each", "enough")
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("each").status is StepStatus.CANCELLED
    assert result.step("after").status is StepStatus.SKIPPED
    await wait_events(journal, "cancelled", 2)
    assert events(journal, "start") == 2  # the third instance never started


async def test_pause_stops_new_for_each_instances_until_resume(
    worker: None, stepflow: StepflowClient, journal: str, tmp_path: Path
) -> None:
    gates = [Gate(journal, tmp_path, f"g{i}") for i in range(2)]
    spec = pipeline(*gated_for_each(journal, gates, max_concurrency=1))
    run = await stepflow.start_pipeline(spec)
    await wait_events(journal, "start", 1)

    await stepflow.pause(run.workflow_id)
    gates[0].open()
    await wait_events(journal, "end", 1)
    await asyncio.sleep(1.0)  # room for a wrongly started instance to show up
    assert events(journal, "start") == 1
    state = await stepflow.status(run.workflow_id)
    each = next(s for s in state.steps if s.id == "each")
    assert (each.items, each.items_done) == (2, 1)

    await stepflow.resume(run.workflow_id)
    gates[1].open()
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("each") == [0, 1]


def gated_loop(gate_dir: Path, journal: str, **fields: Any) -> dict[str, Any]:
    """`revise`: two iterations, each holding on the gate file `g<iteration>`."""
    gate = Gate(journal, gate_dir, "unused")
    body = gate_step("work", gate) | {
        "args": {
            **gate.args("{{ loop.iteration }}"),
            "release": f"{gate_dir}/g{{{{ loop.iteration }}}}",
        }
    }
    return {"id": "revise", "kind": "loop", "max_iterations": 2, "steps": [body], **fields}


async def test_cancel_step_on_a_loop_cancels_its_running_iteration(
    worker: None,
    stepflow: StepflowClient,
    journal: str,
    tmp_path: Path,
    temporal_client: Client,
) -> None:
    spec = pipeline(gated_loop(tmp_path, journal, on_failure="continue"))
    run = await stepflow.start_pipeline(spec)
    await wait_events(journal, "start", 1)

    await stepflow.cancel_step(run.workflow_id, "revise")
    result = await stepflow.get_result(run.workflow_id)

    assert result.step("revise").status is StepStatus.CANCELLED
    assert result.step("revise").iteration == 1
    await wait_events(journal, "cancelled", 1)
    iteration = f"{run.workflow_id}/revise/1"
    assert await child_status(temporal_client, iteration) is WorkflowExecutionStatus.CANCELED


async def test_pause_holds_the_next_loop_iteration_until_resume(
    worker: None,
    stepflow: StepflowClient,
    journal: str,
    tmp_path: Path,
    temporal_client: Client,
) -> None:
    run = await stepflow.start_pipeline(pipeline(gated_loop(tmp_path, journal)))
    await wait_events(journal, "start", 1)

    await stepflow.pause(run.workflow_id)
    (tmp_path / "g1").touch()
    await wait_events(journal, "end", 1)
    await asyncio.sleep(1.0)
    assert events(journal, "start") == 1  # iteration 2 waits for resume

    await stepflow.resume(run.workflow_id)
    (tmp_path / "g2").touch()
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("revise") == {"work": 2}


async def test_cancel_step_on_a_sub_pipeline_cancels_the_child_run(
    worker: None,
    stepflow: StepflowClient,
    journal: str,
    tmp_path: Path,
    temporal_client: Client,
) -> None:
    gate = Gate(journal, tmp_path, "child")
    child = {"name": "child", "steps": [gate_step("work", gate)]}
    spec = pipeline(
        {"id": "sub", "kind": "pipeline", "pipeline": child, "on_failure": "continue"},
        step("after", "echo", depends_on=["sub"], args={"value": 1}),
    )
    run = await stepflow.start_pipeline(spec)
    await wait_events(journal, "start", 1)

    await stepflow.cancel_step(run.workflow_id, "sub")
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("sub").status is StepStatus.CANCELLED
    assert result.step("after").status is StepStatus.SKIPPED
    sub = f"{run.workflow_id}/sub"
    assert await child_status(temporal_client, sub) is WorkflowExecutionStatus.CANCELED
