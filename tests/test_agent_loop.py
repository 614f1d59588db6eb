"""The agent step's loop against a scripted model: tool calls, their checks, and the limits.

Every model call goes through the real `openai` client to the scripted
server on 127.0.0.1; every tool call is a real activity on the real server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from temporalio.client import Client

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import StepStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, ToolCall, hang, text, tool_calls
from tests.support.tools import journal_read
from tests.support.waiting import wait_until

FAST_RETRY = {"initial_interval": "100ms", "max_attempts": 2}


async def test_a_multi_turn_tool_loop_feeds_each_result_back_to_the_model(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        tool_calls(("record", {"journal": journal, "value": "first"}), usage=(100, 10)),
        tool_calls(("record", {"journal": journal, "value": {"n": 2}}), usage=(150, 10)),
        text("found first and 2", usage=(200, 5)),
    )
    result = await stepflow.run_pipeline(pipeline(agent("a", tools=["record"], input="go")))

    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.output == "found first and 2"
    assert record.tool_calls == 2
    assert record.model == "gpt-4o-mini"
    usage = record.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.model_calls) == (450, 25, 3)
    assert result.usage == usage  # the only agent step: the pipeline's sum is the step's

    requests = model_server.requests
    assert len(requests) == 3 and not model_server.unexpected
    assert requests[0].tools == ["record"]
    assert [m["role"] for m in requests[0].messages] == ["system", "user"]
    assert requests[0].messages[1]["content"] == "Input:\ngo"
    # Each next request is the conversation so far: the call, then its result.
    second = requests[1].messages
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
    assert second[2]["tool_calls"][0]["function"]["name"] == "record"
    assert second[3] == {"role": "tool", "tool_call_id": "call_1", "content": "first"}
    third = requests[2].messages
    assert third[:4] == second
    assert third[5]["content"] == '{\n  "n": 2\n}'
    assert [e["event"] for e in journal_read(journal)] == ["start", "end", "start", "end"]


async def test_parallel_tool_calls_of_one_reply_run_at_the_same_time(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    # The rendezvous tool only returns once 3 calls of its group are running at once.
    meet = {"journal": journal, "group": "g", "expect": 3, "wait_seconds": 15}
    model_server.play(
        tool_calls(("rendezvous", meet), ("rendezvous", meet), ("rendezvous", meet)),
        text("all met"),
    )
    result = await stepflow.run_pipeline(pipeline(agent("a", tools=["rendezvous"])))

    assert result.step("a").status is StepStatus.SUCCEEDED, result.step("a").error
    assert result.step("a").tool_calls == 3
    results = [m for m in model_server.requests[1].messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == ["call_1", "call_2", "call_3"]
    assert all(not m["content"].startswith("Error") for m in results)


async def test_sequential_mode_runs_one_tool_call_after_the_other(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    call = {"journal": journal, "seconds": 0.3}
    model_server.play(
        tool_calls(("record", {**call, "value": 1}), ("record", {**call, "value": 2})),
        text("done"),
    )
    spec = pipeline(agent("a", tools=["record"], tool_calls="sequential"))
    result = await stepflow.run_pipeline(spec)

    assert result.step("a").status is StepStatus.SUCCEEDED
    assert [e["event"] for e in journal_read(journal)] == ["start", "end", "start", "end"]
    assert model_server.requests[0].body.get("parallel_tool_calls") is False


async def test_calls_that_must_not_run_go_back_to_the_model_as_errors(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        tool_calls(
            ("fail", {"message": "should never run"}),  # registered, but not this step's
            ("rm_everything", {}),  # not a tool at all
            ("record", {"value": 1}),  # the required `journal` is missing
            ("record", '{"journal": "x", "value": '),  # malformed JSON
        ),
        tool_calls(("record", {"journal": journal, "value": "fixed"})),
        text("corrected myself"),
    )
    result = await stepflow.run_pipeline(pipeline(agent("a", tools=["record"])))

    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED
    assert record.tool_calls == 1  # only the corrected call ran
    errors = [m["content"] for m in model_server.requests[1].messages if m["role"] == "tool"]
    assert errors[0] == ("Error: tool 'fail' is not available to this step (available: record)")
    assert errors[1].startswith("Error: tool 'rm_everything' is not available")
    assert errors[2].startswith("Error: the arguments of 'record' do not match its schema")
    assert "journal: Field required" in errors[2]
    assert errors[3].startswith("Error: the arguments of 'record' are not valid JSON")
    assert [e["event"] for e in journal_read(journal)] == ["start", "end"]


async def test_a_tool_that_fails_after_its_retries_reports_its_error_to_the_model(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(
        tool_calls(("fail", {"message": "disk on fire"})),
        text("worked around it"),
    )
    spec = pipeline(agent("a", tools=["fail"], tool_retry=FAST_RETRY))
    result = await stepflow.run_pipeline(spec)

    assert result.step("a").status is StepStatus.SUCCEEDED
    assert result.step("a").output == "worked around it"
    assert model_server.requests[1].messages[-1]["content"] == "Error: RuntimeError: disk on fire"


async def test_max_model_calls_fails_the_step_with_an_error_that_says_so(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.respond_with(lambda request: tool_calls(("record", {"journal": journal})))
    spec = pipeline(agent("a", tools=["record"], max_model_calls=3))
    result = await stepflow.run_pipeline(spec)

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "MaxModelCallsExceeded"
    assert record.error == "no final answer after 3 model calls (max_model_calls: 3)"
    assert len(model_server.requests) == 3
    # The tool calls of the last reply are not run: there would be no call left to read them.
    assert [e["event"] for e in journal_read(journal)].count("start") == 2
    assert record.usage is not None and record.usage.model_calls == 3
    assert result.usage.model_calls == 3


async def test_a_failing_pipeline_cancels_its_running_agent_steps(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(hang(60))
    spec = pipeline(
        agent("slow"),
        step("wait", "record", args={"journal": journal, "seconds": 0.5}),
        step("boom", "fail", depends_on=["wait"], args={"message": "no", "non_retryable": True}),
    )
    started = time.monotonic()
    result = await stepflow.run_pipeline(spec)

    assert time.monotonic() - started < 20  # not the 60 s the model would have taken
    assert result.step("boom").status is StepStatus.FAILED
    slow = result.step("slow")
    assert slow.status is StepStatus.CANCELLED
    assert slow.reason == "pipeline failed at step 'boom'"


async def test_cancelling_one_agent_step_from_outside_is_that_steps_failure(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    temporal_client: Client,
) -> None:
    model_server.play(hang(60))
    spec = pipeline(
        agent("slow", on_failure="continue"),
        agent("after_slow", depends_on=["slow"]),
        step("independent", "echo", args={"value": 1}),
    )
    run = await stepflow.start_pipeline(spec)
    # The model server runs in threads: poll what it has seen until the call is under way.
    await wait_until(lambda: model_server.requests, "the slow step's model call to arrive")
    await temporal_client.get_workflow_handle(f"{run.workflow_id}/slow").cancel()
    result = await stepflow.get_result(run.workflow_id)

    assert result.step("slow").status is StepStatus.CANCELLED
    assert result.step("after_slow").status is StepStatus.SKIPPED
    assert result.step("independent").status is StepStatus.SUCCEEDED


async def test_calls_with_the_same_id_still_get_their_own_idempotency_keys(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        tool_calls(
            ToolCall("record", json.dumps({"journal": journal, "value": 1}), id="dup"),
            ToolCall("record", json.dumps({"journal": journal, "value": 2}), id="dup"),
        ),
        text("done"),
    )
    result = await stepflow.run_pipeline(pipeline(agent("a", tools=["record"])))

    assert result.step("a").status is StepStatus.SUCCEEDED
    keys = {e["key"] for e in journal_read(journal)}
    assert len(keys) == 2 and all(k.endswith(("/a/call-1.1", "/a/call-1.2")) for k in keys)


async def test_a_huge_tool_result_is_cut_before_it_reaches_the_model(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        tool_calls(("record", {"journal": journal, "value": "y" * 150_000})), text("ok")
    )
    result = await stepflow.run_pipeline(pipeline(agent("a", tools=["record"])))

    assert result.step("a").status is StepStatus.SUCCEEDED
    content = model_server.requests[1].messages[-1]["content"]
    assert content.startswith("y" * 100_000)
    assert content.endswith("[... 50,000 more characters cut by Stepflow]")


async def test_a_conversation_too_large_for_temporal_fails_the_step_clearly(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    journal: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without a payload store every call carries the whole conversation in history.
    monkeypatch.setenv("STEPFLOW_PAYLOAD_STORE", "off")
    big = {"journal": journal, "value": "z" * 400_000}
    model_server.respond_with(lambda request: tool_calls(("record", big)))
    result = await stepflow.run_pipeline(pipeline(agent("a", tools=["record"])))

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ConversationTooLarge"
    assert "over the 1,500,000 a model call may carry" in (record.error or "")
    assert len(model_server.requests) == 3


async def test_with_a_payload_store_a_conversation_outgrows_what_one_call_could_carry(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Calls name the stored conversation and carry only what is new: no 1.5 MB wall.
    monkeypatch.setenv("STEPFLOW_PAYLOAD_DIR", str(tmp_path / "payloads"))
    big = {"journal": journal, "value": "z" * 400_000}
    model_server.play(*[tool_calls(("record", big)) for _ in range(4)], text("done"))
    result = await stepflow.run_pipeline(pipeline(agent("a", tools=["record"])))

    assert result.step("a").output == "done", result.step("a").error
    assert len(json.dumps(model_server.requests[-1].messages)) > 1_500_000


async def test_local_tools_run_in_the_workflow_task_without_an_activity_task(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    journal: str,
    temporal_client: Client,
) -> None:
    model_server.play(
        tool_calls(("record", {"journal": journal, "value": 1})),
        tool_calls(("echo", {"value": 2})),
        text("done"),
    )
    spec = pipeline(agent("a", tools=["record", "echo"], local_tools=["record"]))
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    assert result.step("a").output == "done" and result.step("a").tool_calls == 2
    assert [e["event"] for e in journal_read(journal)] == ["start", "end"]
    history = await temporal_client.get_workflow_handle(f"{run.workflow_id}/a").fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
    ]
    assert scheduled == ["model_call", "model_call", "tool_echo", "model_call"]
    assert markers.count("core_local_activity") == 1  # record ran as a local activity
