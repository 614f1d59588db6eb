"""`approval` and `input` steps: a person answers through an update; timeouts are durable timers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.control import APPROVE, INPUT, REJECT, RunStatus, StepInput, StepRequest
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.control_tools import (
    Gate,
    approval,
    assert_mentions,
    gate_step,
    history,
    human_input,
    one_line,
    rejection,
    status,
    timers,
    wait_started,
    wait_state,
    wait_step,
)
from tests.support.helpers import pipeline, step


async def test_approve_with_a_comment_succeeds_the_step_and_dependents_see_it(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        step("plan", "echo", args={"value": {"target": "staging"}}),
        approval(
            "sign",
            message="Deploy to {{ steps.plan.output.target }} for {{ inputs.who }}?",
            depends_on=["plan"],
        ),
        step(
            "deploy",
            "echo",
            args={"value": "{{ steps.sign.output.comment }} by {{ steps.sign.output.by }}"},
            depends_on=["sign"],
        ),
        inputs={"who": {"type": "string", "default": "ops"}},
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    state = await wait_step(handle, "sign", "WAITING")
    sign = state.step("sign")
    assert sign.waiting_for == "approval"
    assert sign.message == "Deploy to staging for ops?"
    assert state.status is RunStatus.WAITING
    assert state.step("deploy").status is StepStatus.PENDING

    answer = one_line(
        await handle.execute_update(APPROVE, StepRequest(step="sign", comment="looks good"))
    )
    assert "sign" in answer
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    sign = result.step("sign")
    assert sign.status is StepStatus.SUCCEEDED
    assert sign.output == {"approved": True, "comment": "looks good", "by": "user"}
    assert sign.comment == "looks good"
    assert result.output("deploy") == "looks good by user"
    assert not timers(await history(handle))  # no timeout: no timer


async def test_reject_fails_the_step_as_rejected_and_on_failure_fail_ends_the_pipeline(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(approval("sign"), step("deploy", "echo", depends_on=["sign"]))
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "sign", "WAITING")

    one_line(await handle.execute_update(REJECT, StepRequest(step="sign", comment="too risky")))
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.FAILED
    sign = result.step("sign")
    assert sign.status is StepStatus.FAILED
    assert sign.error_type == "Rejected"
    assert sign.error == "rejected: too risky"
    assert sign.comment == "too risky"
    assert result.step("deploy").status is StepStatus.SKIPPED
    assert result.error == "step 'sign' failed: rejected: too risky"
    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED


async def test_reject_with_on_failure_continue_skips_the_dependents_only(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        approval("sign", on_failure="continue"),
        step("deploy", "echo", depends_on=["sign"]),
        step("report", "echo", args={"value": "written"}),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "sign", "WAITING")
    one_line(await handle.execute_update(REJECT, StepRequest(step="sign")))
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("sign").status is StepStatus.FAILED
    assert result.step("sign").error_type == "Rejected"
    assert result.step("deploy").status is StepStatus.SKIPPED
    assert result.step("deploy").reason == "dependency 'sign' failed"
    assert result.output("report") == "written"


@pytest.mark.parametrize("on_timeout", ["approve", "reject", "fail"])
async def test_an_approval_timeout_fires_on_a_durable_timer(
    worker: None, stepflow: StepflowClient, temporal_client: Client, on_timeout: str
) -> None:
    spec = pipeline(
        approval("sign", timeout="1s", on_timeout=on_timeout, on_failure="continue"),
        step("after", "echo", args={"value": "ran"}, depends_on=["sign"]),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    sign = result.step("sign")
    assert sign.started_at is not None and sign.ended_at is not None
    assert sign.ended_at - sign.started_at >= timedelta(seconds=1)
    if on_timeout == "approve":
        assert sign.status is StepStatus.SUCCEEDED
        assert isinstance(sign.output, dict)
        assert sign.output["approved"] is True and sign.output["by"] == "timeout"
        assert result.output("after") == "ran"
    elif on_timeout == "reject":
        assert sign.status is StepStatus.FAILED
        assert sign.error_type == "Rejected"
        assert result.step("after").status is StepStatus.SKIPPED
    else:
        assert sign.status is StepStatus.TIMED_OUT
        assert result.step("after").status is StepStatus.SKIPPED
        assert result.step("after").reason == "dependency 'sign' timed out"
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    assert timedelta(seconds=1) in timers(await history(handle))


async def test_an_answer_before_the_timeout_wins(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(approval("sign", timeout="1h", on_timeout="reject"))
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "sign", "WAITING")
    assert timedelta(hours=1) in timers(await history(handle))
    one_line(await handle.execute_update(APPROVE, StepRequest(step="sign", comment="quick")))
    result = await stepflow.get_result(run.workflow_id)
    assert result.step("sign").status is StepStatus.SUCCEEDED
    assert result.output("sign") == {"approved": True, "comment": "quick", "by": "user"}


async def test_an_approval_wait_survives_a_worker_restart(
    temporal_client: Client, settings: Settings, stepflow: StepflowClient
) -> None:
    tools = load_tool_modules(settings.tool_modules)
    spec = pipeline(
        approval("sign", message="Go?"),
        step(
            "after", "echo", args={"value": "{{ steps.sign.output.comment }}"}, depends_on=["sign"]
        ),
    )
    async with build_worker(temporal_client, settings, tools=tools):
        run = await stepflow.start_pipeline(spec)
        handle = temporal_client.get_workflow_handle(run.workflow_id)
        await wait_step(handle, "sign", "WAITING")
    # No worker at all now: the wait lives in Temporal alone.
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING

    async with build_worker(temporal_client, settings, tools=tools):
        state = await status(handle)  # a new worker rebuilt the run from its history
        assert state.step("sign").status is StepStatus.WAITING
        assert state.step("sign").message == "Go?"
        one_line(
            await handle.execute_update(APPROVE, StepRequest(step="sign", comment="after restart"))
        )
        result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("after") == "after restart"


async def test_an_input_value_becomes_the_output_dependents_use(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "integer"}, "currency": {"enum": ["EUR", "USD"]}},
        "required": ["amount", "currency"],
    }
    spec = pipeline(
        human_input("budget", message="Budget for {{ inputs.project }}?", schema=schema),
        step(
            "plan",
            "echo",
            args={
                "value": "spend {{ steps.budget.output.amount }} {{ steps.budget.output.currency }}"
            },
            depends_on=["budget"],
        ),
        step("whole", "echo", args={"value": "{{ steps.budget.output }}"}, depends_on=["budget"]),
        inputs={"project": {"type": "string", "default": "apollo"}},
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    state = await wait_step(handle, "budget", "WAITING")
    budget = state.step("budget")
    assert budget.waiting_for == "input"
    assert budget.message == "Budget for apollo?"
    assert state.status is RunStatus.WAITING

    message = await rejection(
        handle.execute_update(INPUT, StepInput(step="budget", value={"amount": "lots"}))
    )
    assert_mentions(message, "budget", r"'lots' is not of type 'integer'|'currency' is a required")
    message = await rejection(
        handle.execute_update(
            INPUT, StepInput(step="budget", value={"amount": 5, "currency": "GBP"})
        )
    )
    assert_mentions(message, r"'GBP' is not one of \['EUR', 'USD'\]")
    assert (await status(handle)).step("budget").status is StepStatus.WAITING

    value = {"amount": 1200, "currency": "EUR"}
    one_line(await handle.execute_update(INPUT, StepInput(step="budget", value=value)))
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("budget").status is StepStatus.SUCCEEDED
    assert result.output("budget") == value
    assert result.output("plan") == "spend 1200 EUR"
    assert result.output("whole") == value


async def test_an_input_without_a_schema_takes_any_value(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(human_input("anything"))
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "anything", "WAITING")
    value = [1, "two", {"three": None}]
    one_line(await handle.execute_update(INPUT, StepInput(step="anything", value=value)))
    assert (await stepflow.get_result(run.workflow_id)).output("anything") == value


async def test_an_input_timeout_is_timed_out_and_a_fallback_gives_the_default(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        human_input(
            "limit",
            schema={"type": "integer"},
            timeout="1s",
            on_failure={"fallback": 10},
        ),
        human_input("note", timeout="1s", on_failure="continue"),
        step("use", "echo", args={"value": "{{ steps.limit.output }}"}, depends_on=["limit"]),
        step("after_note", "echo", depends_on=["note"]),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    limit = result.step("limit")
    assert limit.used_fallback and limit.output == 10
    assert result.output("use") == 10
    assert result.step("note").status is StepStatus.TIMED_OUT
    assert result.step("after_note").status is StepStatus.SKIPPED
    assert result.step("after_note").reason == "dependency 'note' timed out"
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    assert timers(await history(handle)).count(timedelta(seconds=1)) == 2


async def test_people_waiting_take_no_concurrency_slot(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "work")
    spec = pipeline(
        approval("sign"),
        human_input("ask"),
        gate_step("work", gate),
        max_concurrency=1,
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(
        journal, "work", handle=handle
    )  # would wait for ever if the people held the slot
    state = await wait_state(
        handle,
        lambda s: (
            s.step("sign").status is StepStatus.WAITING
            and s.step("ask").status is StepStatus.WAITING
        ),
        "both waiting while work runs",
    )
    assert state.step("work").status is StepStatus.RUNNING
    gate.open()
    one_line(await handle.execute_update(APPROVE, StepRequest(step="sign")))
    one_line(await handle.execute_update(INPUT, StepInput(step="ask", value="ok")))
    assert (await stepflow.get_result(run.workflow_id)).status is PipelineStatus.SUCCEEDED
