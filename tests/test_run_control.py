"""Steering a running pipeline through the Temporal client: validators, signals, pause, cancel_step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.control import (
    APPROVE,
    CANCEL_STEP,
    INPUT,
    PAUSE,
    REJECT,
    RESUME,
    RunStatus,
    StepInput,
    StepRequest,
)
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.control_tools import (
    HEARTBEAT,
    Gate,
    accepted_update_ids,
    approval,
    assert_mentions,
    events_of,
    eventually,
    gate_step,
    history,
    human_input,
    of_type,
    one_line,
    rejection,
    scheduled_activity_steps,
    status,
    wait_cancelled,
    wait_started,
    wait_state,
    wait_step,
)
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, tool_calls
from tests.support.tools import journal_read

NOT_WAITING = r"not waiting|pending"
UNKNOWN = r"unknown|no step|not a step|does not exist|no such"


async def test_every_validator_rejects_nonsense_with_a_clear_message_and_no_trace(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "first")
    spec = pipeline(
        gate_step("first", gate),
        step("done", "echo", args={"value": 1}),
        human_input(
            "ask", message="How many?", schema={"type": "integer", "minimum": 1}, depends_on=[]
        ),
        approval("sign", depends_on=["first"]),
        human_input("fill", schema={"type": "string"}, depends_on=["first"]),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "first", handle=handle)
    await wait_state(
        handle,
        lambda s: (
            s.step("done").status is StepStatus.SUCCEEDED
            and s.step("ask").status is StepStatus.WAITING
        ),
        "done succeeded, ask waiting",
    )

    async def rejected(name: str, arg: object = None) -> str:
        if arg is None:
            return await rejection(handle.execute_update(name))
        return await rejection(handle.execute_update(name, arg))

    # Unknown steps: the message names the step.
    for name in (CANCEL_STEP, APPROVE, REJECT):
        message = await rejected(name, StepRequest(step="nope"))
        assert_mentions(message, "nope", UNKNOWN)
    assert_mentions(await rejected(INPUT, StepInput(step="nope", value=1)), "nope", UNKNOWN)

    # The wrong kind of step.
    assert_mentions(await rejected(APPROVE, StepRequest(step="done")), "done", "approval")
    assert_mentions(await rejected(REJECT, StepRequest(step="done")), "done", "approval")
    assert_mentions(await rejected(APPROVE, StepRequest(step="ask")), "ask", "approval")
    assert_mentions(await rejected(INPUT, StepInput(step="done", value=1)), "done", "input")
    assert_mentions(await rejected(INPUT, StepInput(step="sign", value=1)), "sign", "input")

    # Steps that do not wait (yet): PENDING ones.
    assert_mentions(await rejected(APPROVE, StepRequest(step="sign")), "sign", NOT_WAITING)
    assert_mentions(await rejected(REJECT, StepRequest(step="sign")), "sign", NOT_WAITING)
    assert_mentions(await rejected(INPUT, StepInput(step="fill", value="x")), "fill", NOT_WAITING)

    # A step that already ended cannot be cancelled.
    message = await rejected(CANCEL_STEP, StepRequest(step="done", comment="too late"))
    assert_mentions(message, "done", r"already|ended|finished|succeeded|not running")

    # Resume when not paused.
    assert_mentions(await rejected(RESUME), r"not paused|isn't paused|is not paused")

    # Values that fail the input's schema: jsonschema's own words.
    assert_mentions(
        await rejected(INPUT, StepInput(step="ask", value="many")),
        "ask",
        r"'many' is not of type 'integer'",
    )
    assert_mentions(
        await rejected(INPUT, StepInput(step="ask", value=0)), r"0 is less than the minimum of 1"
    )

    # Nothing above left a trace, and the run still waits where it did.
    state = await status(handle)
    assert state.step("ask").status is StepStatus.WAITING
    assert state.step("sign").status is StepStatus.PENDING
    assert state.step("first").status is StepStatus.RUNNING
    assert accepted_update_ids(await history(handle)) == []

    # Pause twice: the second is rejected.
    one_line(await handle.execute_update(PAUSE, id="pause-1"))
    assert_mentions(await rejection(handle.execute_update(PAUSE, id="pause-2")), "already paused")
    one_line(await handle.execute_update(RESUME, id="resume-1"))

    # Valid requests go through and are the only updates in history.
    one_line(await handle.execute_update(INPUT, StepInput(step="ask", value=3), id="input-ask"))
    # The same answer twice: the step no longer waits.
    again = await rejection(handle.execute_update(INPUT, StepInput(step="ask", value=4)))
    assert_mentions(again, "ask", r"not waiting|already|succeeded|answered")
    gate.open()
    await wait_state(
        handle,
        lambda s: (
            s.step("sign").status is StepStatus.WAITING
            and s.step("fill").status is StepStatus.WAITING
        ),
        "sign and fill waiting",
    )
    one_line(await handle.execute_update(APPROVE, StepRequest(step="sign"), id="approve-sign"))
    await wait_step(handle, "sign", "SUCCEEDED")
    # A step that already SUCCEEDED waits for nothing.
    for name in (APPROVE, REJECT):
        message = await rejected(name, StepRequest(step="sign"))
        assert_mentions(message, "sign", r"not waiting|already|succeeded|answered")
    one_line(await handle.execute_update(INPUT, StepInput(step="fill", value="x"), id="input-fill"))
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("ask") == 3 and result.output("fill") == "x"
    events = await history(handle)
    assert accepted_update_ids(events) == [
        "pause-1",
        "resume-1",
        "input-ask",
        "approve-sign",
        "input-fill",
    ]
    assert not of_type(events, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)


async def test_signals_of_the_same_names_act_and_invalid_ones_are_ignored(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    spec = pipeline(
        approval("sign"),
        human_input("ask", schema={"type": "integer"}),
        step(
            "after",
            "echo",
            args={"value": ["{{ steps.sign.output.comment }}", "{{ steps.ask.output }}"]},
            depends_on=["sign", "ask"],
        ),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_state(
        handle,
        lambda s: (
            s.step("sign").status is StepStatus.WAITING
            and s.step("ask").status is StepStatus.WAITING
        ),
        "both waiting",
    )

    # Each of these fails its update's validator: a signal is logged and ignored.
    await handle.signal(APPROVE, StepRequest(step="nope"))
    await handle.signal(APPROVE, StepRequest(step="ask"))
    await handle.signal(REJECT, StepRequest(step="after"))
    await handle.signal(INPUT, StepInput(step="ask", value="not a number"))
    await handle.signal(INPUT, StepInput(step="sign", value=1))
    await handle.signal(CANCEL_STEP, StepRequest(step="nope"))
    await handle.signal(RESUME)
    # A valid pause by signal, then an invalid second pause.
    await handle.signal(PAUSE)
    await handle.signal(PAUSE)

    state = await wait_state(handle, lambda s: s.status is RunStatus.PAUSED, "paused by signal")
    assert state.step("sign").status is StepStatus.WAITING
    assert state.step("ask").status is StepStatus.WAITING
    assert state.step("after").status is StepStatus.PENDING
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING

    await handle.signal(RESUME)
    await wait_state(handle, lambda s: s.status is RunStatus.WAITING, "resumed by signal")
    await handle.signal(APPROVE, StepRequest(step="sign", comment="by signal"))
    await handle.signal(INPUT, StepInput(step="ask", value=7))
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("sign") == {"approved": True, "comment": "by signal", "by": "user"}
    assert result.output("ask") == 7
    assert result.output("after") == ["by signal", 7]
    events = await history(handle)
    assert not of_type(events, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
    assert len(of_type(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)) == 12


async def test_pause_lets_the_running_step_finish_and_starts_nothing_until_resume(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "a")
    spec = pipeline(
        gate_step("a", gate, value="A"),
        step("b", "echo", args={"value": "{{ steps.a.output }}"}, depends_on=["a"]),
        step("c", "echo", args={"value": 3}, depends_on=["a"]),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "a", handle=handle)

    one_line(await handle.execute_update(PAUSE))
    state = await status(handle)
    assert state.status is RunStatus.PAUSED
    assert state.step("a").status is StepStatus.RUNNING

    gate.open()  # the running step finishes while paused...
    state = await wait_step(handle, "a", "SUCCEEDED")
    # ...and in the same workflow task its dependents would have started: they did not.
    assert state.status is RunStatus.PAUSED
    assert state.step("b").status is StepStatus.PENDING
    assert state.step("c").status is StepStatus.PENDING
    assert scheduled_activity_steps(await history(handle)) == ["a"]
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING

    one_line(await handle.execute_update(RESUME))
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("b") == "A" and result.output("c") == 3
    a, b, c = result.steps
    assert a.ended_at is not None and b.started_at is not None and c.started_at is not None
    assert b.started_at >= a.ended_at and c.started_at >= a.ended_at
    assert (await status(handle)).status is RunStatus.SUCCEEDED


async def test_cancel_step_on_a_running_tool_with_on_failure_fail_fails_the_pipeline(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    spec = pipeline(
        gate_step("a", Gate(journal, tmp_path, "a")),
        step("b", "echo", depends_on=["a"]),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "a", handle=handle)

    answer = one_line(
        await handle.execute_update(CANCEL_STEP, StepRequest(step="a", comment="stop it"))
    )
    assert "a" in answer
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.FAILED
    a = result.step("a")
    assert a.status is StepStatus.CANCELLED
    assert a.comment == "stop it"
    assert result.step("b").status is StepStatus.SKIPPED
    assert result.error is not None and "'a'" in result.error
    # The tool heard of it through its heartbeat.
    await wait_cancelled(journal, "a")
    assert not events_of(journal_read(journal), "a", "end")
    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED


async def test_cancel_step_with_continue_skips_only_its_dependents(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    spec = pipeline(
        gate_step("a", Gate(journal, tmp_path, "a"), on_failure="continue"),
        step("b", "echo", depends_on=["a"]),
        step("c", "echo", depends_on=["b"]),
        step("other", "echo", args={"value": "still here"}),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "a", handle=handle)
    one_line(await handle.execute_update(CANCEL_STEP, StepRequest(step="a")))
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("a").status is StepStatus.CANCELLED
    assert result.step("b").status is StepStatus.SKIPPED
    assert result.step("b").reason == "dependency 'a' cancelled"
    assert result.step("c").reason == "dependency 'b' skipped"
    assert result.output("other") == "still here"
    await wait_cancelled(journal, "a")


async def test_cancel_step_with_a_fallback_hands_the_fallback_to_dependents(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    spec = pipeline(
        gate_step("a", Gate(journal, tmp_path, "a"), on_failure={"fallback": {"n": 0}}),
        step("b", "echo", args={"value": "n={{ steps.a.output.n }}"}, depends_on=["a"]),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "a", handle=handle)
    one_line(await handle.execute_update(CANCEL_STEP, StepRequest(step="a")))
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("a").used_fallback
    assert result.output("a") == {"n": 0}
    assert result.output("b") == "n=0"
    await wait_cancelled(journal, "a")


async def test_cancel_step_on_a_pending_step_means_it_never_starts(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "a")
    spec = pipeline(
        gate_step("a", gate),
        step("b", "record", args={"journal": journal}, depends_on=["a"], on_failure="continue"),
        step("c", "echo", depends_on=["b"]),
        step("d", "echo", depends_on=["a"]),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "a", handle=handle)

    one_line(await handle.execute_update(CANCEL_STEP, StepRequest(step="b", comment="skip it")))
    state = await status(handle)
    assert state.step("b").status is StepStatus.CANCELLED
    assert state.step("b").comment == "skip it"
    assert state.step("c").status is StepStatus.SKIPPED
    assert state.step("a").status is StepStatus.RUNNING

    gate.open()
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("b").status is StepStatus.CANCELLED
    assert result.step("b").started_at is None
    assert result.step("c").status is StepStatus.SKIPPED
    assert result.step("d").status is StepStatus.SUCCEEDED
    assert not events_of(journal_read(journal), "b", "start")
    assert "b" not in scheduled_activity_steps(await history(handle))


async def test_cancel_step_on_a_retrying_step(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    spec = pipeline(
        gate_step("a", Gate(journal, tmp_path, "a"), fail_attempts=2, on_failure="continue")
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_state(
        handle,
        lambda s: s.step("a").status is StepStatus.RETRYING and s.step("a").attempts == 3,
        "attempt 3 running",
    )
    await wait_started(journal, "a", handle=handle)
    one_line(await handle.execute_update(CANCEL_STEP, StepRequest(step="a")))
    result = await stepflow.get_result(run.workflow_id)
    assert result.step("a").status is StepStatus.CANCELLED
    await wait_cancelled(journal, "a")
    assert [e["attempt"] for e in events_of(journal_read(journal), "a", "cancelled")] == [3]


async def test_cancel_step_on_a_running_agent_step_cancels_its_child(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
) -> None:
    gate = Gate(journal, tmp_path, "tool")
    model_server.play(tool_calls(("control_gate", gate.args())))
    spec = pipeline(
        agent("writer", tools=["control_gate"], tool_timeout=HEARTBEAT, on_failure="continue"),
        step("after", "echo", depends_on=["writer"]),
        step("other", "echo", args={"value": 1}),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "writer", handle=handle)

    one_line(await handle.execute_update(CANCEL_STEP, StepRequest(step="writer", comment="enough")))
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    writer = result.step("writer")
    assert writer.status is StepStatus.CANCELLED
    assert writer.comment == "enough"
    assert result.step("after").status is StepStatus.SKIPPED
    assert result.output("other") == 1
    child = temporal_client.get_workflow_handle(f"{run.workflow_id}/writer")

    async def child_status() -> WorkflowExecutionStatus | None:
        return (await child.describe()).status

    await eventually(
        child_status, lambda s: s is WorkflowExecutionStatus.CANCELED, "the child ended CANCELED"
    )
    await wait_cancelled(journal, "writer")
    assert len(model_server.requests) == 1 and not model_server.unexpected


async def test_cancel_step_on_a_waiting_approval_applies_on_failure(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(approval("sign"), step("after", "echo", depends_on=["sign"]))
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "sign", "WAITING")

    one_line(await handle.execute_update(CANCEL_STEP, StepRequest(step="sign", comment="no")))
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.FAILED
    assert result.step("sign").status is StepStatus.CANCELLED
    assert result.step("after").status is StepStatus.SKIPPED
    assert (await status(handle)).step("sign").comment == "no"


async def test_updates_accepted_as_the_last_steps_end_all_get_their_answer(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    steps = [approval(f"sign{i}") for i in range(4)] + [human_input("ask")]
    run = await stepflow.start_pipeline(pipeline(*steps))
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_state(
        handle,
        lambda s: all(r.status is StepStatus.WAITING for r in s.steps),
        "all waiting",
    )
    answers = await asyncio.gather(
        *(handle.execute_update(APPROVE, StepRequest(step=f"sign{i}")) for i in range(4)),
        handle.execute_update(INPUT, StepInput(step="ask", value={"x": 1})),
    )
    for answer in answers:
        one_line(answer)
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("ask") == {"x": 1}
    events = await history(handle)
    assert len(accepted_update_ids(events)) == 5
    completed = of_type(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED)
    assert len(completed) == 5
    assert all(
        e.workflow_execution_update_completed_event_attributes.outcome.HasField("success")
        for e in completed
    )


async def test_a_cancel_racing_the_last_step_is_answered_or_refused_and_history_agrees(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "last")
    run = await stepflow.start_pipeline(pipeline(gate_step("last", gate, on_failure="continue")))
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "last", handle=handle)

    gate.open()  # the step ends about now, and the request arrives about now too
    try:
        answer: str | None = one_line(
            await handle.execute_update(CANCEL_STEP, StepRequest(step="last"), id="race")
        )
    except WorkflowUpdateFailedError as err:  # rejected: the step had already ended
        assert isinstance(err.cause, ApplicationError), err.cause
        assert_mentions(err.cause.message, "last", r"already|ended|finished|succeeded")
        answer = None
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    events = await history(handle)
    completed = of_type(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED)
    if answer is None:
        assert accepted_update_ids(events) == [] and not completed
        assert result.step("last").status is StepStatus.SUCCEEDED
    else:
        assert accepted_update_ids(events) == ["race"] and len(completed) == 1
        assert result.step("last").status in (StepStatus.CANCELLED, StepStatus.SUCCEEDED)


@pytest.mark.parametrize("policy", ["continue", {"fallback": 1}], ids=["continue", "fallback"])
async def test_cancel_step_in_the_runs_first_task_settles_the_step(
    temporal_client: Client,
    settings: Settings,
    stepflow: StepflowClient,
    journal: str,
    policy: object,
) -> None:
    """Handlers run before `run` starts: the DAG must already be indexed for them."""
    spec = pipeline(
        step("a", "record", args={"journal": journal, "value": 1}, on_failure=policy),
        step("b", "record", args={"journal": journal, "value": 2}, depends_on=["a"]),
    )
    run = await stepflow.start_pipeline(spec)  # no worker yet: the first task waits
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    answer = asyncio.create_task(
        handle.execute_update(CANCEL_STEP, StepRequest(step="a"), result_type=str)
    )
    await asyncio.sleep(0.5)  # let the update reach the server before the first task runs
    tools = load_tool_modules(settings.tool_modules)
    async with build_worker(temporal_client, settings, tools=tools):
        assert await asyncio.wait_for(answer, 15) == "cancelled step 'a'"
        result = await stepflow.get_result(run.workflow_id)
    history = await handle.fetch_history()
    assert not [e for e in history.events if e.HasField("workflow_task_failed_event_attributes")]
    a, b = result.step("a"), result.step("b")
    assert a.error == "cancelled on request" and a.attempts == 0  # it never ran
    if policy == "continue":
        assert (a.status, b.status) == (StepStatus.CANCELLED, StepStatus.SKIPPED)
    else:  # the fallback stands in for its output
        assert (a.status, a.used_fallback, a.output) == (StepStatus.SUCCEEDED, True, 1)
        assert (b.status, b.output) == (StepStatus.SUCCEEDED, 2)
