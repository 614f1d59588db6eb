"""What the model API's failures do to a step: which are retried, when, and which fail at once."""

from __future__ import annotations

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import StepStatus
from tests.support.helpers import agent, pipeline
from tests.support.model_server import ScriptedModelServer, error, hang, text

# Short intervals, so any wait longer than these came from the API's Retry-After.
QUICK = {"initial_interval": "100ms", "backoff_coefficient": 1.0}


async def test_429_is_retried_no_sooner_than_retry_after_says(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(error(429, "slow down", headers={"Retry-After": "2"}), text("ok"))
    result = await stepflow.run_pipeline(pipeline(agent("a", model_retry=QUICK)))

    assert result.step("a").status is StepStatus.SUCCEEDED
    first, second = model_server.requests
    assert second.received_at - first.received_at >= 2.0


async def test_retry_after_ms_is_used_too(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(error(429, headers={"retry-after-ms": "1500"}), text("ok"))
    result = await stepflow.run_pipeline(pipeline(agent("a", model_retry=QUICK)))

    assert result.step("a").status is StepStatus.SUCCEEDED
    first, second = model_server.requests
    assert second.received_at - first.received_at >= 1.5


async def test_a_500_is_retried_and_the_step_succeeds(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(error(500, "upstream exploded"), error(503), text("ok"))
    result = await stepflow.run_pipeline(pipeline(agent("a", model_retry=QUICK)))

    assert result.step("a").status is StepStatus.SUCCEEDED
    assert result.output("a") == "ok"
    assert len(model_server.requests) == 3


async def test_server_errors_that_outlast_the_retries_fail_the_step(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.respond_with(lambda request: error(500, "upstream exploded"))
    spec = pipeline(agent("a", model_retry={**QUICK, "max_attempts": 2}))
    result = await stepflow.run_pipeline(spec)

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelServerError"
    assert record.error == "model call 1 failed: model API answered 500: upstream exploded"
    assert len(model_server.requests) == 2


async def test_401_fails_at_once_with_the_apis_message(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(error(401, "Incorrect API key provided"))
    result = await stepflow.run_pipeline(pipeline(agent("a", model_retry=QUICK)))

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelRequestRejected"
    assert record.error == "model call 1 failed: model API answered 401: Incorrect API key provided"
    assert len(model_server.requests) == 1  # 5 attempts allowed, one made


async def test_a_response_that_hangs_past_the_timeout_is_retried(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(hang(30), text("answered the second time"))
    spec = pipeline(agent("a", model_retry=QUICK, model_timeout={"start_to_close": "1s"}))
    result = await stepflow.run_pipeline(spec)

    assert result.step("a").status is StepStatus.SUCCEEDED
    assert result.output("a") == "answered the second time"
    first, second = model_server.requests
    assert second.received_at - first.received_at >= 1.0


async def test_a_400_the_api_says_to_retry_is_retried(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    """`x-should-retry: true` is obeyed before the status, as the openai client does."""
    model_server.play(
        error(400, "try that again", headers={"x-should-retry": "true"}), text("second time")
    )
    result = await stepflow.run_pipeline(pipeline(agent("a", model_retry=QUICK)))

    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED
    assert result.output("a") == "second time"
    assert len(model_server.requests) == 2


async def test_a_500_the_api_says_not_to_retry_fails_at_once(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(error(500, "do not bother", headers={"x-should-retry": "false"}))
    result = await stepflow.run_pipeline(pipeline(agent("a", model_retry=QUICK)))

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelServerError"  # what happened; the header said: no retry
    assert record.error == "model call 1 failed: model API answered 500: do not bother"
    assert record.attempts == 1
    assert len(model_server.requests) == 1  # 5 attempts allowed, one made


async def test_a_429_the_api_says_not_to_retry_fails_at_once(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(
        error(429, "quota gone", headers={"x-should-retry": "false", "Retry-After": "1"})
    )
    result = await stepflow.run_pipeline(pipeline(agent("a", model_retry=QUICK)))

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelRateLimited"
    assert len(model_server.requests) == 1
