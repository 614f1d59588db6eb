"""Model fallback chains (`model: [primary, backup]`), step budgets and plan-mode failures.

Two or three model names point at the one scripted server (`STEPFLOW_MODELS`); the server
tells them apart by the request's `model` field and answers each from its own script.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from stepflow.activities.model_call import _usage
from stepflow.client.api import StepflowClient
from stepflow.client.model_checks import chain_issues, chain_model_warnings
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import (
    AGENT_STEP_WORKFLOW,
    AgentStep,
    AgentStepInput,
    AgentStepResult,
    PassedOver,
    PlanAllow,
    RetrySpec,
    StepStatus,
    TimeoutSpec,
    TokenUsage,
)
from tests.support.helpers import agent, pipeline
from tests.support.model_server import (
    ByModel,
    ScriptedModelServer,
    by_model,
    error,
    refusal,
    text,
    tool_calls,
)

# Short intervals, so any wait longer than these came from the API's Retry-After.
QUICK = {"initial_interval": "100ms", "backoff_coefficient": 1.0}
CHAIN = ["primary", "backup"]


@pytest.fixture
def models(model_server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """`primary`, `backup` and `local` all reach the scripted server (its address, its key)."""
    monkeypatch.setenv("STEPFLOW_MODELS", json.dumps({"primary": {}, "backup": {}, "local": {}}))


def chained(step_id: str = "a", **fields: Any) -> dict[str, Any]:
    return agent(step_id, model=CHAIN, model_retry=QUICK, **fields)


def asked(server: ScriptedModelServer) -> list[str | None]:
    """The models asked, in the order the requests came."""
    return [request.model for request in server.requests]


async def test_after_429s_the_backup_answers_and_the_next_call_asks_the_primary_again(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, models: None
) -> None:
    scripts = by_model(
        primary=[error(429, "slow down"), error(429, "slow down"), text("done", usage=(30, 3))],
        backup=[tool_calls(("echo", {"value": 1}), usage=(20, 2))],
    )
    model_server.respond_with(scripts)
    spec = pipeline(chained(tools=["echo"], model_fallback={"after_attempts": 2}))
    result = await stepflow.run_pipeline(spec)

    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.output == "done" and record.model == "primary"
    assert asked(model_server) == ["primary", "primary", "backup", "primary"]
    assert record.passed_over == [
        PassedOver(
            call=1,
            model="primary",
            error_type="ModelRateLimited",
            error="model API answered 429: slow down (after 2 attempts)",
        )
    ]
    assert record.usage_by_model is not None
    by = {name: (u.total_tokens, u.model_calls) for name, u in record.usage_by_model.items()}
    assert by == {"backup": (22, 1), "primary": (33, 1)}
    assert record.usage is not None and record.usage.total_tokens == 55
    assert scripts.remaining == {"primary": 0, "backup": 0} and not model_server.unexpected


async def test_an_unknown_model_is_passed_over_after_one_attempt_and_sits_out(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    models: None,
    temporal_client: Client,
) -> None:
    model_server.respond_with(
        by_model(
            primary=[error(404, "The model `primary` does not exist")],
            backup=[tool_calls(("echo", {"value": 1})), text("done")],
        )
    )
    run = await stepflow.start_pipeline(pipeline(chained(tools=["echo"])))
    result = await stepflow.get_result(run.workflow_id)

    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    # One attempt of five, and the second call does not ask the primary again.
    assert asked(model_server) == ["primary", "backup", "backup"]
    assert record.model == "backup"
    assert record.passed_over == [
        PassedOver(
            call=1,
            model="primary",
            error_type="ModelNotFound",
            error="model API answered 404: The model `primary` does not exist",
        )
    ]
    assert record.usage_by_model is not None and list(record.usage_by_model) == ["backup"]
    # The Web UI names the model each call asked.
    history = await temporal_client.get_workflow_handle(f"{run.workflow_id}/a").fetch_history()
    summaries = [
        e.user_metadata.summary.data.decode()
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "model_call"
    ]
    assert [json.loads(s) for s in summaries] == [
        "a · model call 1/10 · primary",
        "a · model call 1/10 · backup",
        "a · model call 2/10 · backup",
    ]


async def test_a_context_too_long_moves_on_at_once(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, models: None
) -> None:
    too_long = "This model's maximum context length is 8192 tokens. However, you requested 9000"
    model_server.respond_with(
        by_model(
            primary=[error(400, too_long, code="context_length_exceeded")],
            backup=[text("fits here")],
        )
    )
    result = await stepflow.run_pipeline(pipeline(chained()))

    record = result.step("a")
    assert record.output == "fits here", record.error
    assert asked(model_server) == ["primary", "backup"]
    assert record.passed_over is not None
    assert [(p.model, p.error_type) for p in record.passed_over] == [
        ("primary", "ModelContextExceeded")
    ]


async def test_a_model_whose_context_tokens_are_too_few_is_never_asked(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = {"context_tokens": 10}  # about 40 bytes: less than any conversation
    monkeypatch.setenv("STEPFLOW_MODELS", json.dumps({"primary": small, "backup": {}}))
    model_server.respond_with(by_model(backup=[text("long context")]))
    result = await stepflow.run_pipeline(pipeline(chained(input="a question")))

    record = result.step("a")
    assert record.output == "long context", record.error
    assert asked(model_server) == ["backup"]
    assert record.passed_over is not None
    assert record.passed_over[0].error_type == "ModelContextExceeded"
    assert "that model 'primary' takes" in record.passed_over[0].error


async def test_a_refused_answer_moves_on_at_once(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, models: None
) -> None:
    model_server.respond_with(
        by_model(primary=[refusal("I can't help with that.")], backup=[text("here you go")])
    )
    result = await stepflow.run_pipeline(pipeline(chained()))

    record = result.step("a")
    assert record.output == "here you go", record.error
    assert record.passed_over is not None
    assert (record.passed_over[0].error_type, record.passed_over[0].error) == (
        "ModelContentRefused",
        "the model refused to answer: I can't help with that.",
    )


async def test_a_malformed_request_does_not_fall_back(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, models: None
) -> None:
    scripts = by_model(
        primary=[error(400, "Invalid value for 'messages'")], backup=[text("never asked")]
    )
    model_server.respond_with(scripts)
    result = await stepflow.run_pipeline(pipeline(chained()))

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelRequestRejected"
    assert (
        record.error == "model call 1 failed: model API answered 400: Invalid value for 'messages'"
    )
    assert asked(model_server) == ["primary"]
    assert record.passed_over is None


async def test_the_whole_chain_failing_fails_the_step_naming_every_model(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, models: None
) -> None:
    model_server.respond_with(
        ByModel(
            {
                "primary": [error(429, "slow down")] * 2,
                "backup": [error(404, "no such model")],
                "local": [error(500, "local box down")] * 3,
            }
        )
    )
    step = agent(
        "a",
        model=["primary", "backup", "local"],
        model_retry={**QUICK, "max_attempts": 3},  # the last model's attempts
        model_fallback={"after_attempts": 2},
    )
    result = await stepflow.run_pipeline(pipeline(step))

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelServerError"  # the last model's
    assert record.error == (
        "model call 1 failed on every model of the chain: "
        "primary: ModelRateLimited: model API answered 429: slow down (after 2 attempts); "
        "backup: ModelNotFound: model API answered 404: no such model; "
        "local: ModelServerError: model API answered 500: local box down (after 3 attempts)"
    )
    assert asked(model_server) == ["primary"] * 2 + ["backup"] + ["local"] * 3
    assert record.passed_over is not None
    assert [(p.model, p.error_type) for p in record.passed_over] == [
        ("primary", "ModelRateLimited"),
        ("backup", "ModelNotFound"),
    ]
    assert not model_server.unexpected


async def test_retry_after_is_still_honoured_within_a_models_attempts(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, models: None
) -> None:
    model_server.respond_with(
        by_model(primary=[error(429, "slow down", headers={"Retry-After": "2"}), text("ok")])
    )
    result = await stepflow.run_pipeline(pipeline(chained(model_fallback={"after_attempts": 2})))

    record = result.step("a")
    assert record.output == "ok", record.error
    assert record.passed_over is None and record.model == "primary"
    first, second = model_server.requests
    assert (first.model, second.model) == ("primary", "primary")
    assert second.received_at - first.received_at >= 2.0


async def test_a_step_budget_in_tokens_stops_the_next_model_call(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(tool_calls(("echo", {"value": 1}), usage=(90, 20)), text("never"))
    result = await stepflow.run_pipeline(
        pipeline(agent("a", tools=["echo"], budget={"tokens": 100}))
    )

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "BudgetExceeded"
    assert record.error == "budget spent: 110 of 100 tokens (step budget)"
    assert len(model_server.requests) == 1  # the second call was never made
    assert record.usage is not None and record.usage.total_tokens == 110
    assert record.usage_by_model is not None
    assert record.usage_by_model["gpt-4o-mini"].total_tokens == 110


async def test_a_plan_still_invalid_after_its_repairs_fails_plan_invalid(
    worker: None,
    temporal_client: Client,
    task_queue: str,
    model_server: ScriptedModelServer,
) -> None:
    """The agent loop of a plan step (its runner gives it `plan`): PlanInvalid, not
    OutputSchemaMismatch, and the repair turn speaks of the plan."""
    model_server.play(text("first, a plan in words"), text("still not JSON"))
    step = AgentStep.model_validate(
        {
            "id": "plan",
            "kind": "agent",
            "instructions": "Plan it.",
            "max_output_repairs": 1,
        }
    )
    retry = RetrySpec(max_attempts=1)
    request = AgentStepInput(
        pipeline="test",
        step=step,
        instructions="Plan it.",
        input="the request",
        model_retry=retry,
        model_timeout=TimeoutSpec.model_validate({"start_to_close": "30s"}),
        tool_retry=retry,
        tool_timeout=TimeoutSpec.model_validate({"start_to_close": "30s"}),
        idempotency_prefix="plan-test",
        plan=PlanAllow(),
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await temporal_client.execute_workflow(
            AGENT_STEP_WORKFLOW,
            request,
            id=f"plan-{uuid.uuid4()}",
            task_queue=task_queue,
            result_type=AgentStepResult,
        )

    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "PlanInvalid"
    assert cause.message.startswith("the plan is still invalid after 1 repair: ")
    repair = model_server.requests[1].messages[-1]["content"]
    assert repair.startswith("Your plan is not valid: ")


def test_cached_prompt_tokens_are_counted() -> None:
    usage = _usage(
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "total_tokens": 105,
            "prompt_tokens_details": {"cached_tokens": 64},
        }
    )
    assert usage == TokenUsage(
        prompt_tokens=100, completion_tokens=5, total_tokens=105, model_calls=1, cached_tokens=64
    )
    assert _usage({"prompt_tokens": 1, "prompt_tokens_details": None}).cached_tokens == 0


def test_chains_are_checked_before_a_run() -> None:
    spec = pipeline(
        agent("empty", model=[]),
        agent("twice", model=["primary", "backup", "primary"]),
        agent("typo", model=["primary", "bakup"]),
        agent("single", model="primary", model_fallback={"after_attempts": 3}),
    )
    assert [str(issue) for issue in chain_issues(spec)] == [
        "step 'empty': model: a model chain needs at least one model; leave `model` out for "
        "the worker's default",
        "step 'twice': model[2]: 'primary' is already in the chain: a model takes over only once",
    ]
    settings = Settings(models={"primary": {}, "backup": {}})
    assert chain_model_warnings(spec, settings) == [
        "step 'typo': model[1] 'bakup' is not in STEPFLOW_MODELS (did you mean 'backup'?); "
        "it goes to the default endpoint under that name",
        "step 'single': model_fallback does nothing without a model chain "
        "(model: [primary, backup])",
    ]
