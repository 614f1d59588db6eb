"""The `status` query, asked through the Temporal client while a run goes and after it ended."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client

from stepflow.client.api import StepflowClient
from stepflow.workflows.control import APPROVE, CANCEL_STEP, RunStatus, StepRequest
from stepflow.workflows.models import PipelineStatus, StepStatus, TokenUsage
from tests.support.control_tools import (
    HEARTBEAT,
    Gate,
    approval,
    eventually,
    gate_step,
    one_line,
    status,
    wait_started,
    wait_state,
)
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, text, tool_calls


def nonzero(counts: dict[StepStatus, int]) -> dict[StepStatus, int]:
    return {k: v for k, v in counts.items() if v}


async def test_status_shows_every_kind_of_step_state_in_spec_order(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    running, retrying, victim = (Gate(journal, tmp_path, n) for n in ("run", "retry", "victim"))
    spec = pipeline(
        step("ok", "echo", args={"value": "v1"}),
        step(
            "bad", "fail", args={"message": "broken", "non_retryable": True}, on_failure="continue"
        ),
        step("after_bad", "echo", depends_on=["bad"]),
        step(
            "slow",
            "slow_heartbeat",
            args={"journal": journal, "block_on_attempt": 1},
            timeout={"start_to_close": "500ms"},
            retry={"max_attempts": 1},
            on_failure="continue",
        ),
        gate_step("victim", victim, on_failure="continue"),
        gate_step("running", running, value="ran"),
        gate_step("retrying", retrying, fail_attempts=2),
        approval(
            "sign", message="Ship {{ steps.ok.output }} to {{ inputs.env }}?", depends_on=["ok"]
        ),
        step("later", "echo", args={"value": "{{ steps.sign.output.by }}"}, depends_on=["sign"]),
        inputs={"env": {"type": "string", "default": "prod"}},
        description="every state at once",
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "victim", handle=handle)
    one_line(
        await handle.execute_update(CANCEL_STEP, StepRequest(step="victim", comment="not needed"))
    )

    state = await wait_state(
        handle,
        lambda s: (
            s.step("retrying").status is StepStatus.RETRYING
            and s.step("retrying").attempts == 3
            and s.step("slow").status is StepStatus.TIMED_OUT
            and s.step("victim").status is StepStatus.CANCELLED
            and s.step("sign").status is StepStatus.WAITING
            and s.step("bad").status is StepStatus.FAILED
        ),
        "every step in its state",
    )

    assert [r.id for r in state.steps] == [s.id for s in spec.steps]
    assert {r.id: r.status for r in state.steps} == {
        "ok": StepStatus.SUCCEEDED,
        "bad": StepStatus.FAILED,
        "after_bad": StepStatus.SKIPPED,
        "slow": StepStatus.TIMED_OUT,
        "victim": StepStatus.CANCELLED,
        "running": StepStatus.RUNNING,
        "retrying": StepStatus.RETRYING,
        "sign": StepStatus.WAITING,
        "later": StepStatus.PENDING,
    }
    # Every status a first run can show (REUSED is a rerun's: tests/test_rerun.py).
    assert nonzero(state.counts) == dict.fromkeys(set(StepStatus) - {StepStatus.REUSED}, 1)
    assert state.status is RunStatus.WAITING  # a step waits for a person
    assert not state.finished
    assert state.workflow_id == run.workflow_id
    assert state.pipeline == "test" and state.description == "every state at once"
    assert state.error is None
    assert state.usage == TokenUsage()  # no agent steps

    assert state.step("ok").output == "v1" and state.step("ok").attempts == 1
    assert state.step("bad").error == "broken" and state.step("bad").error_type == "ToolError"
    assert state.step("after_bad").reason == "dependency 'bad' failed"
    assert state.step("slow").error == "start-to-close timeout"
    assert state.step("victim").comment == "not needed"
    sign = state.step("sign")
    assert sign.waiting_for == "approval"
    assert sign.message == "Ship v1 to prod?"
    assert state.step("running").ended_at is None and state.step("running").output is None
    assert state.step("later").started_at is None

    # Times: the run's start, then each step's, all up to the state's `as_of`.
    for record in state.steps:
        if record.started_at is not None:
            assert state.started_at <= record.started_at <= state.as_of, record.id
        if record.ended_at is not None:
            assert record.started_at is not None and record.started_at <= record.ended_at
            assert record.ended_at <= state.as_of, record.id
    for ended in ("ok", "bad", "slow", "victim"):
        assert state.step(ended).ended_at is not None, ended
    for going in ("running", "retrying", "sign"):
        assert state.step(going).started_at is not None, going

    # Let it all finish: the query still answers for the closed run, with the final records.
    running.open()
    retrying.open()
    one_line(await handle.execute_update(APPROVE, StepRequest(step="sign", comment="go")))
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    final = await status(handle)
    assert final.status is RunStatus.SUCCEEDED and final.finished
    assert [r.model_dump() for r in final.steps] == [r.model_dump() for r in result.steps]
    assert final.step("retrying").status is StepStatus.SUCCEEDED
    assert final.step("retrying").attempts == 3
    assert final.step("running").output == "ran"
    assert final.step("later").output == "user"
    assert final.step("victim").status is StepStatus.CANCELLED
    assert final.as_of >= state.as_of
    assert nonzero(final.counts) == {
        StepStatus.SUCCEEDED: 5,
        StepStatus.FAILED: 1,
        StepStatus.SKIPPED: 1,
        StepStatus.TIMED_OUT: 1,
        StepStatus.CANCELLED: 1,
    }


async def test_a_step_retrying_shows_the_attempt_now_running(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "g")
    run = await stepflow.start_pipeline(pipeline(gate_step("call", gate, fail_attempts=2)))
    handle = temporal_client.get_workflow_handle(run.workflow_id)

    first = await wait_state(
        handle, lambda s: s.step("call").status is StepStatus.RETRYING, "call retrying"
    )
    assert first.step("call").attempts in (2, 3)
    state = await wait_state(handle, lambda s: s.step("call").attempts == 3, "attempt 3 running")
    assert state.step("call").status is StepStatus.RETRYING
    assert state.status is RunStatus.RUNNING

    gate.open()
    result = await stepflow.get_result(run.workflow_id)
    assert result.step("call").status is StepStatus.SUCCEEDED
    assert result.step("call").attempts == 3


async def test_agent_steps_on_the_offline_model_report_their_tokens(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        agent("summarize", instructions="Summarize the input.", input="durable agent pipelines"),
        agent("review", instructions="Review the summary.", depends_on=["summarize"]),
        step("plain", "echo", args={"value": 1}),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    state = await status(temporal_client.get_workflow_handle(run.workflow_id))

    total = TokenUsage()
    for step_id in ("summarize", "review"):
        record = state.step(step_id)
        assert record.model == "offline"
        assert record.usage is not None and record.usage.total_tokens > 0
        assert record.usage.model_calls == 1
        assert record.model_call == 1
        assert record.max_model_calls == 10
        total = total.plus(record.usage)
    assert state.step("plain").usage is None
    assert state.usage == total == result.usage
    assert state.usage.total_tokens == state.usage.prompt_tokens + state.usage.completion_tokens


async def test_a_running_agent_step_shows_its_model_call_and_tokens_so_far(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
) -> None:
    gate = Gate(journal, tmp_path, "g")
    model_server.play(
        tool_calls(("echo", {"value": 1}), usage=(100, 10)),
        tool_calls(("control_gate", gate.args("opened")), usage=(150, 20)),
        text("all done", usage=(200, 5)),
    )
    spec = pipeline(
        agent(
            "writer",
            tools=["echo", "control_gate"],
            max_model_calls=4,
            tool_timeout=HEARTBEAT,
        )
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    try:
        await wait_started(journal, "writer", handle=handle)
        await _check_model_call_2_running(stepflow, run.workflow_id)
    finally:
        gate.open()
    result = await stepflow.get_result(run.workflow_id)
    assert result.step("writer").output == "all done"
    final = await status(handle)
    writer = final.step("writer")
    assert writer.status is StepStatus.SUCCEEDED
    assert writer.model_call == 3 and writer.max_model_calls == 4
    assert writer.usage is not None
    assert (writer.usage.prompt_tokens, writer.usage.completion_tokens) == (450, 35)
    assert writer.usage.model_calls == 3
    assert final.usage == writer.usage == result.usage
    assert not model_server.unexpected


async def _check_model_call_2_running(stepflow: StepflowClient, workflow_id: str) -> None:
    # Model call 2 has returned (its tool is running): its number and its tokens are known.
    # The agent step answers for itself; `status` puts its answer on the pipeline's record.
    state = await eventually(
        lambda: stepflow.status(workflow_id),
        lambda s: s.step("writer").model_call == 2 and s.usage.model_calls == 2,
        "model call 2 and its tokens reported while its tool runs",
    )
    writer = state.step("writer")
    assert writer.status is StepStatus.RUNNING
    assert writer.max_model_calls == 4
    assert writer.usage is not None
    assert (writer.usage.prompt_tokens, writer.usage.completion_tokens) == (250, 30)
    assert state.usage == writer.usage  # running steps count in the pipeline's tokens too
    assert state.status is RunStatus.RUNNING


async def test_the_query_answers_after_the_run_failed(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        step("ok", "echo", args={"value": 1}),
        step("boom", "fail", args={"message": "broken", "non_retryable": True}),
        step("after", "echo", depends_on=["boom"]),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.FAILED

    state = await status(temporal_client.get_workflow_handle(run.workflow_id))
    assert state.status is RunStatus.FAILED and state.finished
    assert state.error == "step 'boom' failed: broken" == result.error
    assert {r.id: r.status for r in state.steps} == {
        "ok": StepStatus.SUCCEEDED,
        "boom": StepStatus.FAILED,
        "after": StepStatus.SKIPPED,
    }
    assert nonzero(state.counts) == {
        StepStatus.SUCCEEDED: 1,
        StepStatus.FAILED: 1,
        StepStatus.SKIPPED: 1,
    }
