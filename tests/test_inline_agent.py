"""`inline: true`: an agent step's loop run in the pipeline's own workflow, not a child.

The same loop as a child runs (`workflows.agent_loop.AgentLoop`): the same model and tool
calls, keys and summaries; what differs is where its history goes and where its progress
shows. Every model call goes through the real `openai` client to the scripted server; every
tool call is a real activity on the real server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.workflows.control import CANCEL_STEP, RunStatus, StepRequest
from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import PipelineStatus, StepStatus
from stepflow.workflows.validation import SpecError, check_pipeline
from tests.support.control_tools import (
    HEARTBEAT,
    Gate,
    eventually,
    history,
    of_type,
    status,
    wait_cancelled,
    wait_started,
)
from tests.support.crash import wait_for_journal
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import TEST_API_KEY, ScriptedModelServer, text, tool_calls
from tests.support.processes import tool_worker_env
from tests.support.tools import journal_read
from tests.support.worker_processes import run_through_worker_crash
from tests.test_budgets import CALL_TOKENS, PRICE, busy_agent, priced_models


def summaries(events: list[Any]) -> list[str]:
    """The summaries of the activities a history scheduled, in order."""
    scheduled = of_type(events, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    return [json.loads(e.user_metadata.summary.data) for e in scheduled]


async def test_an_inline_loop_runs_in_the_pipeline_as_a_child_would(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    model_server.play(
        tool_calls(("record", {"journal": journal, "value": "first"}), usage=(100, 10)),
        tool_calls(("record", {"journal": journal, "value": 2}), usage=(150, 10)),
        text("found first and 2", usage=(200, 5)),
    )
    run = await stepflow.start_pipeline(
        pipeline(agent("a", tools=["record"], input="go", inline=True))
    )
    result = await stepflow.get_result(run.workflow_id)

    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.output == "found first and 2"
    assert (record.tool_calls, record.model, record.model_call) == (2, "gpt-4o-mini", 3)
    assert record.usage is not None
    assert (record.usage.prompt_tokens, record.usage.model_calls) == (450, 3)
    assert record.usage_by_model is not None and list(record.usage_by_model) == ["gpt-4o-mini"]
    assert result.usage == record.usage
    assert len(model_server.requests) == 3 and not model_server.unexpected
    assert model_server.requests[2].messages[-1]["content"] == "2"

    # No child: the calls are the pipeline's own activities, summarised as a child's are.
    events = await history(temporal_client.get_workflow_handle(run.workflow_id))
    assert not of_type(events, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    assert summaries(events) == [
        "a · model call 1/10",
        "a · tool record",
        "a · model call 2/10",
        "a · tool record",
        "a · model call 3/10",
    ]
    # The keys a child would have given its tool calls.
    keys = [e["key"] for e in journal_read(journal) if e["event"] == "start"]
    prefix = f"{run.workflow_id}/{run.run_id}/a"
    assert keys == [f"{prefix}/call-1.1", f"{prefix}/call-2.1"]


async def test_an_inline_step_that_fails_keeps_what_it_spent(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        tool_calls(("record", {"journal": journal}), usage=(100, 10)),
        tool_calls(("record", {"journal": journal}), usage=(100, 10)),
    )
    spec = pipeline(
        agent("a", tools=["record"], max_model_calls=2, inline=True, on_failure="continue"),
        step("b", "echo", args={"value": "after"}),
    )
    result = await stepflow.run_pipeline(spec)

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == ErrorType.MAX_MODEL_CALLS_EXCEEDED
    assert "max_model_calls: 2" in (record.error or "")
    assert record.model == "gpt-4o-mini" and record.tool_calls == 1
    assert record.usage is not None and record.usage.model_calls == 2
    assert record.usage_by_model is not None
    assert result.step("b").output == "after"


async def test_inline_for_each_instances_and_full_context(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(text("one"), text("two"), text("summary"))
    spec = pipeline(
        agent("each", input="{{ item }}", for_each="{{ inputs.items }}", inline=True),
        agent("sum", input="sum up", depends_on=["each"], inline=True),
        inputs={"items": {"type": "array", "default": ["x", "y"]}},
    ).model_copy(update={"context": "full"})
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert sorted(result.output("each")) == ["one", "two"]
    assert result.output("sum") == "summary"
    each = result.step("each")
    assert each.usage is not None and each.usage.model_calls == 2
    # Full context: the last step sees the earlier ones' outputs.
    assert "one" in json.dumps(model_server.requests[2].messages)


def test_an_inline_step_with_too_many_model_calls_is_refused() -> None:
    spec = pipeline(agent("long", max_model_calls=51, inline=True), agent("ok", inline=True))
    with pytest.raises(SpecError) as refused:
        check_pipeline(spec, {})
    message = str(refused.value)
    assert "long" in message and "max_model_calls" in message and "inline" in message
    assert "'ok'" not in message
    check_pipeline(pipeline(agent("long", max_model_calls=51)), {})  # a child may


async def test_cancelling_an_inline_step_cancels_its_tool(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
) -> None:
    gate = Gate(journal, tmp_path, "writer")
    model_server.play(tool_calls(("control_gate", gate.args())))
    spec = pipeline(
        agent(
            "writer",
            tools=["control_gate"],
            tool_timeout=HEARTBEAT,
            inline=True,
            on_failure="continue",
        ),
        step("other", "echo", args={"value": "still here"}),
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "writer", handle=handle)

    await handle.execute_update(CANCEL_STEP, StepRequest(step="writer", comment="enough"))
    result = await stepflow.get_result(run.workflow_id)

    writer = result.step("writer")
    assert writer.status is StepStatus.CANCELLED
    assert writer.comment == "enough"
    assert writer.usage is not None and writer.usage.model_calls == 1
    assert result.step("other").output == "still here"
    await wait_cancelled(journal, "writer")
    assert len(model_server.requests) == 1 and not model_server.unexpected


async def test_an_inline_step_resumes_after_its_worker_is_killed(
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
            tool_calls(("record", {"journal": journal, "value": "before"})),
            tool_calls(("slow_heartbeat", {"journal": journal, "seconds": 60})),
            text("done after the crash"),
        )
        spec = pipeline(
            agent(
                "a",
                tools=["record", "slow_heartbeat"],
                tool_timeout={"heartbeat": "1s"},
                tool_retry={"initial_interval": "100ms"},
                inline=True,
            )
        )
        crash = await run_through_worker_crash(
            stepflow,
            env,
            tmp_path,
            spec,
            # `record` ran and ended, and the second call's slow tool is running.
            kill_when=lambda _: wait_for_journal(journal, lambda entries: len(entries) >= 3),
        )

    record = crash.result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.output == "done after the crash"
    # No model call made again: the conversation came back from the pipeline's history.
    assert len(model.requests) == 3 and not model.unexpected
    assert model.requests[2].messages[-1]["content"] == "finished on attempt 2"
    starts = [e for e in journal_read(journal) if e["event"] == "start"]
    # `record` ran once; the interrupted tool ran again with the same key.
    assert [e["attempt"] for e in starts] == [1, 1, 2]
    assert starts[1]["key"] == starts[2]["key"] != starts[0]["key"]


async def test_inline_steps_check_and_charge_the_run_and_step_budgets(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    priced_models(monkeypatch, model_server, priced=PRICE)
    model_server.respond_with(busy_agent)
    spec = pipeline(
        agent(
            "each",
            tools=["echo"],
            max_model_calls=20,
            for_each="{{ inputs.topics }}",
            item_failure="continue",
            budget={"tokens": 2 * CALL_TOKENS + 1},
            inline=True,
        ),
        agent("long", tools=["echo"], max_model_calls=50, inline=True, depends_on=["each"]),
        inputs={"topics": {"type": "array", "default": ["a", "b"]}},
        budget={"tokens": 10 * CALL_TOKENS},
    )
    result = await stepflow.run_pipeline(spec)

    # Each instance: two calls under its own budget, a third that spent it.
    assert [i["error_type"] for i in result.output("each")] == [ErrorType.BUDGET_EXCEEDED] * 2
    long = result.step("long")
    assert long.status is StepStatus.FAILED and long.error_type == ErrorType.BUDGET_EXCEEDED
    assert "run budget spent" in (long.error or "")
    calls = result.usage.model_calls
    assert calls == len(model_server.requests)  # every call made was charged, once
    assert result.budget is not None and result.budget.exceeded
    assert result.budget.spent.total_tokens == calls * CALL_TOKENS
    assert long.usage is not None and long.usage.model_calls == calls - 6


async def test_cancelling_the_run_cancels_an_inline_step(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
) -> None:
    gate = Gate(journal, tmp_path, "writer")
    model_server.play(tool_calls(("control_gate", gate.args())))
    spec = pipeline(agent("writer", tools=["control_gate"], tool_timeout=HEARTBEAT, inline=True))
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "writer", handle=handle)

    await handle.cancel()
    await wait_cancelled(journal, "writer")
    state = await eventually(
        lambda: status(handle), lambda s: s.finished, "the run closed after its cancel"
    )
    assert state.status is RunStatus.CANCELLED
    assert state.step("writer").status is StepStatus.CANCELLED


async def test_status_shows_an_inline_steps_call_tokens_and_retrying_tool(
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
        tool_calls(("control_gate", gate.args("opened", fail_attempts=1)), usage=(150, 20)),
        text("all done", usage=(200, 5)),
    )
    spec = pipeline(
        agent(
            "writer",
            tools=["echo", "control_gate"],
            max_model_calls=4,
            tool_timeout=HEARTBEAT,
            tool_retry={"initial_interval": "100ms"},
            inline=True,
        )
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    try:
        # The tool's second attempt told the pipeline itself, whose record says so.
        state = await eventually(
            lambda: stepflow.status(run.workflow_id),
            lambda s: s.step("writer").status is StepStatus.RETRYING,
            "the inline step's tool retrying",
        )
        writer = state.step("writer")
        assert (writer.attempts, writer.model_call, writer.max_model_calls) == (2, 2, 4)
        assert writer.usage is not None
        assert (writer.usage.prompt_tokens, writer.usage.completion_tokens) == (250, 30)
        assert state.usage == writer.usage
    finally:
        gate.open()
    result = await stepflow.get_result(run.workflow_id)
    assert result.step("writer").output == "all done"
    final = (await status(handle)).step("writer")
    assert final.status is StepStatus.SUCCEEDED and final.model_call == 3
    assert not model_server.unexpected
