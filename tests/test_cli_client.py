"""`StepflowClient`'s run-control API against the real server: the status query, control
requests and their errors, describe/list records, and the search attributes runs start with."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from stepflow.client import runs
from stepflow.client.api import ControlRejected, RunNotFound, StepflowClient
from stepflow.client.schedules import PipelineSchedules
from stepflow.runtime.devserver import EPHEMERAL_STARTUP_TIMEOUT, temporal_binary
from stepflow.runtime.settings import Settings
from stepflow.workflows import control
from stepflow.workflows.control import PipelineState, RunStatus
from stepflow.workflows.models import PipelineInput, PipelineStatus, StepStatus
from stepflow.workflows.pipeline import PipelineWorkflow
from tests.support.control_tools import (
    Gate,
    approval,
    eventually,
    gate_step,
    human_input,
    wait_started,
    wait_step,
)
from tests.support.helpers import pipeline, step


async def rejected(request: Awaitable[Any]) -> str:
    with pytest.raises(ControlRejected) as caught:
        await request
    return str(caught.value)


async def test_status_and_control_requests(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    journal: str,
    tmp_path: Path,
) -> None:
    gate = Gate(journal, tmp_path, "work")
    spec = pipeline(
        human_input("budget", message="Budget?", schema={"type": "integer", "minimum": 1}),
        approval("sign", depends_on=["budget"]),  # no timeout: waits for ever
        gate_step("work", gate, depends_on=["sign"]),
        approval("extra", depends_on=["budget"], on_failure="continue"),
        name="api-control",
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "budget", "WAITING")

    state = await stepflow.status(run.workflow_id)
    assert isinstance(state, PipelineState) and state.status is RunStatus.WAITING
    assert (state.step("budget").waiting_for, state.step("budget").message) == ("input", "Budget?")

    assert "not of type 'integer'" in await rejected(
        stepflow.give_input(run.workflow_id, "budget", "lots")
    )
    assert "sign" in await rejected(stepflow.approve(run.workflow_id, "sign"))  # not waiting yet
    assert "nope" in await rejected(stepflow.reject(run.workflow_id, "nope"))
    answer = await stepflow.give_input(run.workflow_id, "budget", 1200)
    assert answer == "gave input to step 'budget'"

    await wait_step(handle, "sign", "WAITING")
    await stepflow.cancel_step(run.workflow_id, "extra", comment="not needed")
    assert await stepflow.pause(run.workflow_id) == (
        "paused: no new step starts; running steps finish"
    )
    assert "already paused" in await rejected(stepflow.pause(run.workflow_id))
    await stepflow.approve(run.workflow_id, "sign", comment="ok")
    await wait_step(handle, "sign", "SUCCEEDED")
    assert (await stepflow.status(run.workflow_id)).step("work").status is StepStatus.PENDING
    assert await stepflow.resume(run.workflow_id) == "resumed"
    assert "paused" in await rejected(stepflow.resume(run.workflow_id))
    await wait_started(journal, "work")
    gate.open()

    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    extra = result.step("extra")
    assert (extra.status, extra.comment) == (StepStatus.CANCELLED, "not needed")
    assert result.output("sign") == {"approved": True, "comment": "ok", "by": "user"}

    # An ended run still answers the query, and refuses requests in one clear line.
    assert (await stepflow.status(run.workflow_id)).status is RunStatus.SUCCEEDED
    ended = f"run {run.workflow_id} has already ended"
    assert ended in await rejected(stepflow.pause(run.workflow_id))
    assert ended in await rejected(stepflow.approve(run.workflow_id, "sign"))
    assert ended in await rejected(stepflow.cancel(run.workflow_id))
    assert ended in await rejected(stepflow.terminate(run.workflow_id))


@pytest.mark.parametrize(
    "call",
    [
        lambda c, i: c.status(i),
        lambda c, i: c.describe(i),
        lambda c, i: c.history(i),
        lambda c, i: c.pause(i),
        lambda c, i: c.resume(i),
        lambda c, i: c.approve(i, "a"),
        lambda c, i: c.reject(i, "a", "no"),
        lambda c, i: c.give_input(i, "a", 1),
        lambda c, i: c.cancel_step(i, "a"),
        lambda c, i: c.cancel(i),
        lambda c, i: c.terminate(i, "why"),
    ],
    ids=[
        "status",
        "describe",
        "history",
        "pause",
        "resume",
        "approve",
        "reject",
        "give_input",
        "cancel_step",
        "cancel",
        "terminate",
    ],
)
async def test_an_unknown_id_raises_run_not_found(
    stepflow: StepflowClient, call: Callable[[StepflowClient, str], Awaitable[Any]]
) -> None:
    with pytest.raises(RunNotFound, match="no run with id 'no-such-run'"):
        await call(stepflow, "no-such-run")


async def test_runs_start_with_search_attributes_and_memo_and_need_a_worker_to_answer(
    stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(step("a", "echo"), name="api-attributes", description="for the list")
    run = await stepflow.start_pipeline(spec)  # no worker: the run waits, as started
    described = await temporal_client.get_workflow_handle(run.workflow_id).describe()
    attributes = described.typed_search_attributes
    assert attributes.get(control.PIPELINE_ATTRIBUTE) == "api-attributes"
    assert attributes.get(control.STATUS_ATTRIBUTE) == "RUNNING"
    memo = dict(await described.memo())
    assert memo.pop("started_at")  # the chain's start, for listings
    assert memo == {"pipeline": "api-attributes", "description": "for the list"}
    summary = await stepflow.describe(run.workflow_id)
    assert (summary.pipeline, summary.status, summary.execution_status) == (
        "api-attributes",
        "RUNNING",
        "RUNNING",
    )
    stepflow.query_timeout = timedelta(seconds=0.5)  # a query needs a worker; there is none
    assert "is a worker running on its task queue?" in await rejected(
        stepflow.status(run.workflow_id)
    )
    stepflow.update_timeout = timedelta(seconds=0.5)  # ...and so does an update
    assert "is a worker running on its task queue?" in await rejected(
        stepflow.pause(run.workflow_id)
    )
    await stepflow.terminate(run.workflow_id)
    summary = await stepflow.describe(run.workflow_id)
    assert (summary.status, summary.stepflow_status) == ("TERMINATED", "RUNNING")


async def test_runs_started_without_the_attributes_are_listed_as_running(
    worker: None, stepflow: StepflowClient, temporal_client: Client, settings: Settings
) -> None:
    """A run from `temporal workflow start` has no StepflowStatus; it is still running."""
    spec = pipeline(approval("hold"), name="no-attributes")
    handle = await temporal_client.start_workflow(
        PipelineWorkflow.run,
        PipelineInput(spec=spec),
        id=f"no-attributes-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue,
    )

    async def running() -> set[str]:
        return {r.workflow_id for r in await stepflow.list_runs(status="RUNNING", limit=500)}

    await eventually(running, lambda ids: handle.id in ids, "the run listed as RUNNING")
    await stepflow.terminate(handle.id)


async def test_list_rejects_unknown_statuses_and_names(stepflow: StepflowClient) -> None:
    with pytest.raises(ValueError, match="unknown status 'DONE'"):
        await stepflow.list_runs(status="done")
    with pytest.raises(ValueError, match="is not a pipeline name"):
        await stepflow.list_runs(pipeline="x' OR WorkflowId != '")


async def test_without_registered_search_attributes_runs_start_and_one_warning_says_why(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "_warned_unregistered", False)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_startup_timeout=EPHEMERAL_STARTUP_TIMEOUT,
        data_converter=pydantic_data_converter,
    )  # a plain dev server: no Stepflow search attributes
    try:
        stepflow = StepflowClient(env.client, settings=settings)
        spec = pipeline(step("a", "echo"), name="api-bare")
        with structlog.testing.capture_logs() as logs:
            first = await stepflow.start_pipeline(spec)
            second = await StepflowClient(env.client, settings=settings).start_pipeline(spec)
            schedule = await PipelineSchedules(stepflow).create(spec, every=timedelta(hours=1))
        warnings = [e for e in logs if e["event"] == "search_attributes_unregistered"]
        assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
        for run in (first, second):
            summary = await stepflow.describe(run.workflow_id)
            assert (summary.pipeline, summary.stepflow_status) == ("api-bare", None)  # the memo
        assert schedule.pipeline == "api-bare"
    finally:
        await env.shutdown()
