"""What an agent step may see, and what never leaves the worker: the API key."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import StepStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import (
    TEST_API_KEY,
    RecordedRequest,
    ScriptedModelServer,
    text,
)


def _echo(step_id: str, value: str, **fields: object) -> dict[str, object]:
    return step(step_id, "echo", args={"value": value}, **fields)


async def test_no_request_holds_the_output_of_a_step_it_did_not_declare(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.respond_with(lambda request: text(f"ANSWER-OF-{request.messages[0]['content']}"))
    spec = pipeline(
        _echo("left", "LEFT-OUTPUT"),
        _echo("right", "RIGHT-OUTPUT"),
        agent("read_left", "read_left", depends_on=["left"], input="{{ steps.left.output }}"),
        agent("read_right", "read_right", depends_on=["right"]),
        agent("read_both", "read_both", depends_on=["read_left", "right"]),
    )
    result = await stepflow.run_pipeline(spec)

    assert all(r.status is StepStatus.SUCCEEDED for r in result.steps)
    seen = {_agent(r): r.text for r in model_server.requests}
    assert set(seen) == {"read_left", "read_right", "read_both"}
    assert "LEFT-OUTPUT" in seen["read_left"] and "RIGHT-OUTPUT" not in seen["read_left"]
    assert "RIGHT-OUTPUT" in seen["read_right"] and "LEFT-OUTPUT" not in seen["read_right"]
    # read_both sees read_left's answer and right's output, never left's output behind them.
    assert "ANSWER-OF-read_left" in seen["read_both"] and "RIGHT-OUTPUT" in seen["read_both"]
    assert "LEFT-OUTPUT" not in seen["read_both"]


def _agent(request: RecordedRequest) -> str:
    """Which step sent a request: these steps' instructions are their ids."""
    return str(request.messages[0]["content"])


async def test_full_context_shows_every_earlier_step_for_the_baseline(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.respond_with(lambda request: text(f"answer {len(model_server.requests)}"))
    spec = pipeline(
        _echo("left", "LEFT-OUTPUT"),
        agent("first", depends_on=["left"]),
        agent("second", depends_on=["first"]),
        context="full",
    )
    result = await stepflow.run_pipeline(spec)

    assert result.step("second").status is StepStatus.SUCCEEDED
    last = model_server.requests[-1]
    assert "LEFT-OUTPUT" in last.text  # not declared by `second`, seen in full mode
    # The earlier step's conversation comes before this step's own input.
    assert [m["role"] for m in last.messages] == ["system", "user", "assistant", "user"]


async def test_the_api_key_is_sent_to_the_model_and_never_enters_history(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    temporal_client: Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_server.play(text("ok"))
    run = await stepflow.start_pipeline(pipeline(agent("a")))
    result = await stepflow.get_result(run.workflow_id)

    assert result.step("a").status is StepStatus.SUCCEEDED
    assert model_server.requests[0].authorization == f"Bearer {TEST_API_KEY}"
    for workflow_id in (run.workflow_id, f"{run.workflow_id}/a"):
        history = await temporal_client.get_workflow_handle(workflow_id).fetch_history()
        # Binary protobuf holds every payload's bytes as they are (JSON text, here).
        stored = b"".join(event.SerializeToString() for event in history.events)
        assert b"You are a careful test agent" in stored  # the search would find payloads
        assert TEST_API_KEY.encode() not in stored
    logged = capsys.readouterr()
    assert "model call succeeded" in logged.out + logged.err
    assert TEST_API_KEY not in logged.out + logged.err


async def test_without_a_key_or_address_the_offline_model_answers_and_says_so(
    worker: None, stepflow: StepflowClient
) -> None:
    # conftest has removed OPENAI_API_KEY and OPENAI_BASE_URL from the environment.
    spec = pipeline(
        agent(
            "count",
            "Count the words of the input with word_count.",
            tools=["word_count"],
            input={"text": "three little words"},
            output_schema={
                "type": "object",
                "properties": {"summary": {"type": "string"}, "words": {"type": "integer"}},
                "required": ["summary", "words"],
            },
        ),
    )
    result = await stepflow.run_pipeline(spec)

    record = result.step("count")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.model == "offline"
    assert record.tool_calls == 1
    assert set(record.output) == {"summary", "words"}
    assert record.usage is not None and record.usage.model_calls == 2
