"""What Temporal itself shows of a run: search attributes, memo, current details, summaries."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.converter import decode_typed_search_attributes

from stepflow.client.api import StepflowClient
from stepflow.workflows.control import (
    APPROVE,
    PAUSE,
    PIPELINE_ATTRIBUTE,
    RESUME,
    STATUS_ATTRIBUTE,
    RunStatus,
    StepRequest,
)
from stepflow.workflows.models import PipelineInput, PipelineStatus, StepStatus
from stepflow.workflows.pipeline import PIPELINE_WORKFLOW
from tests.support.control_tools import (
    Gate,
    approval,
    current_details,
    eventually,
    gate_step,
    history,
    of_type,
    one_line,
    status,
    summaries,
    wait_started,
    wait_step,
)
from tests.support.helpers import agent, pipeline, step


def unique_name(prefix: str) -> str:
    """A pipeline name no other test uses, so visibility queries see only this test's runs."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def attributes(handle: WorkflowHandle[Any, Any]) -> tuple[str | None, str | None]:
    found = (await handle.describe()).typed_search_attributes
    return found.get(PIPELINE_ATTRIBUTE), found.get(STATUS_ATTRIBUTE)


async def wait_attributes(
    handle: WorkflowHandle[Any, Any], pipeline_name: str, run_status: RunStatus
) -> None:
    async def probe() -> tuple[str | None, str | None]:
        return await attributes(handle)

    await eventually(
        probe, lambda a: a == (pipeline_name, run_status.value), f"StepflowStatus {run_status}"
    )


async def listed(client: Client, query: str) -> list[str]:
    return [execution.id async for execution in client.list_workflows(query)]


async def wait_listed(client: Client, query: str, workflow_id: str) -> None:
    """Visibility is eventually consistent: poll the list until the run shows up."""

    async def probe() -> list[str]:
        return await listed(client, query)

    await eventually(probe, lambda ids: ids == [workflow_id], f"{query} lists the run only")


async def test_search_attributes_follow_the_run_from_start_to_end(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    name = unique_name("vis")
    gate = Gate(journal, tmp_path, "a")
    spec = pipeline(gate_step("a", gate), approval("sign", depends_on=["a"]), name=name)
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    in_pipeline = f"StepflowPipeline = '{name}'"

    # Both are set when the run starts, before the workflow runs any code.
    started = (await history(handle))[0].workflow_execution_started_event_attributes
    at_start = decode_typed_search_attributes(started.search_attributes)
    assert at_start.get(PIPELINE_ATTRIBUTE) == name
    assert at_start.get(STATUS_ATTRIBUTE) == RunStatus.RUNNING.value

    await wait_attributes(handle, name, RunStatus.RUNNING)
    await wait_listed(
        temporal_client, f"{in_pipeline} AND StepflowStatus = 'RUNNING'", run.workflow_id
    )

    await wait_started(journal, "a", handle=handle)
    one_line(await handle.execute_update(PAUSE))
    await wait_attributes(handle, name, RunStatus.PAUSED)
    await wait_listed(
        temporal_client, f"{in_pipeline} AND StepflowStatus = 'PAUSED'", run.workflow_id
    )
    one_line(await handle.execute_update(RESUME))
    await wait_attributes(handle, name, RunStatus.RUNNING)

    gate.open()
    await wait_step(handle, "sign", "WAITING")
    await wait_attributes(handle, name, RunStatus.WAITING)
    await wait_listed(
        temporal_client, f"{in_pipeline} AND StepflowStatus = 'WAITING'", run.workflow_id
    )

    one_line(await handle.execute_update(APPROVE, StepRequest(step="sign")))
    assert (await stepflow.get_result(run.workflow_id)).status is PipelineStatus.SUCCEEDED
    assert await attributes(handle) == (name, "SUCCEEDED")
    await wait_listed(
        temporal_client, f"{in_pipeline} AND StepflowStatus = 'SUCCEEDED'", run.workflow_id
    )
    assert await listed(temporal_client, f"{in_pipeline} AND StepflowStatus = 'RUNNING'") == []
    upserts = of_type(await history(handle), EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES)
    assert upserts, "StepflowStatus was never upserted"


async def test_failed_and_cancelled_runs_end_with_that_status(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    name = unique_name("vis-end")
    failing = await stepflow.start_pipeline(
        pipeline(step("boom", "fail", args={"message": "x", "non_retryable": True}), name=name)
    )
    waiting = await stepflow.start_pipeline(pipeline(approval("sign"), name=name))
    failed_handle = temporal_client.get_workflow_handle(failing.workflow_id)
    cancelled_handle = temporal_client.get_workflow_handle(waiting.workflow_id)

    assert (await stepflow.get_result(failing.workflow_id)).status is PipelineStatus.FAILED
    assert await attributes(failed_handle) == (name, "FAILED")

    await wait_step(cancelled_handle, "sign", "WAITING")
    await cancelled_handle.cancel()
    await wait_attributes(cancelled_handle, name, RunStatus.CANCELLED)
    assert (await cancelled_handle.describe()).status is WorkflowExecutionStatus.CANCELED

    await wait_listed(
        temporal_client,
        f"StepflowPipeline = '{name}' AND StepflowStatus = 'FAILED'",
        failing.workflow_id,
    )
    await wait_listed(
        temporal_client,
        f"StepflowPipeline = '{name}' AND StepflowStatus = 'CANCELLED'",
        waiting.workflow_id,
    )


async def test_a_run_started_without_search_attributes_or_memo_still_works(
    worker: None, temporal_client: Client, task_queue: str
) -> None:
    spec = pipeline(
        step("a", "echo", args={"value": 1}),
        approval("sign", depends_on=["a"]),
        name="plain",
        description="started by hand",
    )
    workflow_id = f"plain-{uuid.uuid4().hex[:8]}"
    handle = await temporal_client.start_workflow(
        PIPELINE_WORKFLOW, PipelineInput(spec=spec), id=workflow_id, task_queue=task_queue
    )
    await wait_step(handle, "sign", "WAITING")
    one_line(await handle.execute_update(APPROVE, StepRequest(step="sign", comment="fine")))
    await handle.result()

    description = await handle.describe()
    assert description.status is WorkflowExecutionStatus.COMPLETED
    assert description.typed_search_attributes.get(PIPELINE_ATTRIBUTE) is None
    assert description.typed_search_attributes.get(STATUS_ATTRIBUTE) is None
    events = await history(handle)
    assert not of_type(events, EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES)
    assert not of_type(events, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
    # The workflow set the memo itself.
    assert await description.memo() == {"pipeline": "plain", "description": "started by hand"}
    assert (await status(handle)).status is RunStatus.SUCCEEDED


async def test_the_memo_holds_the_pipelines_name_and_description(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(step("a", "echo"), name="memo-test", description="What it does.")
    run = await stepflow.start_pipeline(spec)
    await stepflow.get_result(run.workflow_id)
    description = await temporal_client.get_workflow_handle(run.workflow_id).describe()
    memo = dict(await description.memo())
    started_at = datetime.fromisoformat(memo.pop("started_at"))  # the chain's start, for lists
    assert memo == {"pipeline": "memo-test", "description": "What it does."}
    assert description.start_time
    assert abs(started_at - description.start_time) < timedelta(seconds=1)


def table_rows(details: str) -> dict[str, str]:
    """Step id -> the rest of its row, from the markdown table in the current details."""
    rows = {}
    for line in details.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip().strip("`*") for c in line.strip().strip("|").split("|")]
        if cells and cells[0]:
            rows[cells[0]] = " | ".join(cells[1:])
    return rows


async def test_current_details_hold_a_markdown_table_of_steps_kept_current(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        step("fetch", "echo", args={"value": 1}),
        approval("sign", depends_on=["fetch"]),
        step("publish", "echo", depends_on=["sign"]),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "sign", "WAITING")

    async def details() -> str:
        return await current_details(handle)

    text = await eventually(details, lambda d: "WAITING" in d, "details show the wait")
    assert any(line.startswith("|") and "---" in line for line in text.splitlines()), text
    rows = table_rows(text)
    assert "SUCCEEDED" in rows["fetch"], text
    assert "WAITING" in rows["sign"], text
    assert "PENDING" in rows["publish"], text

    one_line(await handle.execute_update(APPROVE, StepRequest(step="sign")))
    await stepflow.get_result(run.workflow_id)
    rows = table_rows(await current_details(handle))
    assert all("SUCCEEDED" in rows[s] for s in ("fetch", "sign", "publish")), rows


async def test_activities_and_children_say_which_step_they_serve(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        step("a", "echo", args={"value": 1}),
        agent("writer", instructions="Write it up; use echo.", tools=["echo"], depends_on=["a"]),
        name="summaries",
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    assert result.step("writer").status is StepStatus.SUCCEEDED, result.step("writer").error

    handle = temporal_client.get_workflow_handle(run.workflow_id)
    assert summaries(temporal_client, await history(handle)) == ["a · tool echo"]
    assert await (await handle.describe()).static_summary() == "pipeline summaries"

    child = temporal_client.get_workflow_handle(f"{run.workflow_id}/writer")
    child_description = await child.describe()
    assert await child_description.static_summary() == "agent step writer"
    assert child_description.parent_id == run.workflow_id
    # The offline model calls echo (named in the instructions), then answers.
    assert summaries(temporal_client, await history(child)) == [
        "writer · model call 1/10",
        "writer · tool echo",
        "writer · model call 2/10",
    ]
    assert result.step("writer").model == "offline"
