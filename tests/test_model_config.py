"""Which model answers: per-model settings on the worker, the default, and the offline model."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pydantic
import pytest

from stepflow.activities.model_call import _retry_after
from stepflow.activities.model_endpoint import ModelNotConfigured, resolve_endpoint
from stepflow.client.api import StepflowClient
from stepflow.runtime.settings import Settings, get_settings
from stepflow.workflows.models import StepStatus
from tests.support.helpers import agent, pipeline
from tests.support.model_server import ScriptedModelServer, text


async def test_a_configured_model_uses_its_own_address_key_variable_and_parameters(
    worker: None, stepflow: StepflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ScriptedModelServer() as server:
        monkeypatch.setenv("WRITER_KEY", "sk-writer-key-42")
        writer = {
            "provider_model": "big-writer-v2",
            "base_url": server.base_url,
            "api_key_env": "WRITER_KEY",
            "params": {"temperature": 0.2},
        }
        monkeypatch.setenv("STEPFLOW_MODELS", json.dumps({"writer": writer}))
        server.play(text("draft", usage=(30, 3)), text("final", usage=(40, 4)))
        spec = pipeline(
            agent("draft", model="writer"),
            agent("polish", model="writer", depends_on=["draft"]),
        )
        result = await stepflow.run_pipeline(spec)

    assert [r.status for r in result.steps] == [StepStatus.SUCCEEDED] * 2
    assert result.step("draft").model == "writer"
    request = server.requests[0]
    assert request.body["model"] == "big-writer-v2"
    assert request.body["temperature"] == 0.2
    assert request.authorization == "Bearer sk-writer-key-42"
    # Usage adds up per step and across the pipeline.
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (70, 7)
    assert result.usage.total_tokens == 77 and result.usage.model_calls == 2


async def test_a_configured_model_without_its_key_fails_the_step_at_once(
    worker: None, stepflow: StepflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_MODELS", json.dumps({"writer": {"api_key_env": "WRITER_KEY"}}))
    result = await stepflow.run_pipeline(pipeline(agent("a", model="writer")))

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelNotConfigured"
    assert "neither WRITER_KEY nor a base_url" in (record.error or "")


async def test_model_offline_is_offline_even_when_an_api_is_configured(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    result = await stepflow.run_pipeline(pipeline(agent("a", model="offline", input="hello")))

    assert result.step("a").model == "offline"
    assert str(result.output("a")).startswith("[offline model]")
    assert model_server.requests == []


def test_the_default_model_and_the_offline_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_endpoint(None, Settings()).offline  # nothing configured
    monkeypatch.setenv("OPENAI_BASE_URL", "")  # as an env file's `OPENAI_BASE_URL=` leaves it
    monkeypatch.setenv("OPENAI_API_KEY", "")
    assert resolve_endpoint(None, Settings()).offline  # empty is unset
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    endpoint = resolve_endpoint(None, Settings(default_model="gpt-test"))
    assert (endpoint.name, endpoint.provider_model, endpoint.offline) == (
        "gpt-test",
        "gpt-test",
        False,
    )
    assert "sk-x" not in repr(endpoint)  # keys stay out of reprs, and so out of logs
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")  # e.g. Ollama, no key
    assert resolve_endpoint("llama3", Settings()).api_key == "not-needed"
    settings = Settings(models={"x": {"api_key_env": "NOPE"}, "y": {"base_url": "http://h/v1"}})
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ModelNotConfigured):
        resolve_endpoint("x", settings)
    assert resolve_endpoint("y", settings).base_url == "http://h/v1"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, timedelta(seconds=2)),
        ({"retry-after": "0.5"}, timedelta(seconds=0.5)),
        ({"retry-after-ms": "1500", "retry-after": "9"}, timedelta(seconds=1.5)),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # in the past
        ({"retry-after": "86400"}, timedelta(minutes=15)),  # capped
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], expected: timedelta | None) -> None:
    assert _retry_after(httpx.Headers(headers)) == expected


def test_settings_are_parsed_again_only_when_the_environment_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every tool call asks for the settings; parsing each time cost 0.5 ms a call."""
    monkeypatch.setenv("STEPFLOW_LOG_CONTENT", "0")
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setenv("STEPFLOW_LOG_CONTENT", "1")
    changed = get_settings()
    assert changed is not first and changed.log_content
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        changed.log_content = False  # type: ignore[misc]  # shared by every caller: frozen
