"""API keys stay in the worker's environment: never in Temporal, never in a log line.

Two planted keys, the default model's (`OPENAI_API_KEY`) and a configured model's
(`STEPFLOW_MODELS` naming `ACME_API_KEY`), are used by agent steps, one of them
refused with a 401 whose message echoes the key back (as some APIs do). Then
everything Temporal keeps is searched for them: each run's input, result,
memo, search attributes and full history (the pipeline's and its agent steps'),
a schedule made from the same pipeline, and every log line of the worker, run
as its own process the way it runs in production.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.client.schedules import PipelineSchedules
from stepflow.workflows.models import PipelineResult, PipelineSpec, StepStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import (
    TEST_API_KEY,
    RecordedRequest,
    Reply,
    ScriptedModelServer,
    error,
    text,
    tool_calls,
)
from tests.support.processes import tool_worker_env
from tests.support.worker_processes import running_worker

PROVIDER_KEY = "sk-planted-acme-provider-key-5f0c9a7e"
KEYS = [TEST_API_KEY, PROVIDER_KEY]

# Private content, which the worker's log must not hold either (STEPFLOW_LOG_CONTENT unset).
PROMPT = "PRIVATE-PROMPT-2c71"
TOPIC = "PRIVATE-TOPIC-88e0"
TOOL_ARGUMENT = "PRIVATE-TOOL-ARGUMENT-a4d9"
MODEL_OUTPUT = "PRIVATE-MODEL-OUTPUT-17bf"
STEP_ARGUMENT = "PRIVATE-STEP-ARGUMENT-6e35"
CONTENT = [PROMPT, TOPIC, TOOL_ARGUMENT, MODEL_OUTPUT, STEP_ARGUMENT]


def keyed_pipeline() -> PipelineSpec:
    return pipeline(
        agent(
            "ask",
            f"{PROMPT}: look the topic up with echo.",
            tools=["echo"],
            input={"topic": "{{ inputs.topic }}"},
        ),
        agent("acme", "Say hello.", model="acme", on_failure="continue", depends_on=["ask"]),
        step("note", "echo", args={"value": STEP_ARGUMENT}),
        name="keyed",
        description="calls two model providers",
        inputs={"topic": {"type": "string"}},
    )


def provider(request: RecordedRequest) -> Reply:
    """Acme refuses the key and echoes it; the default model asks for a tool, then answers."""
    if request.model == "acme":
        return error(401, f"Incorrect API key provided: {request.authorization}")
    if request.messages and request.messages[-1].get("role") == "tool":
        return text(MODEL_OUTPUT)
    return tool_calls(("echo", {"value": TOOL_ARGUMENT}))


def configure_models(model_server: ScriptedModelServer) -> dict[str, str]:
    """The environment of a worker with both providers, each key in its own variable."""
    model_server.respond_with(provider)
    models = {"acme": {"base_url": model_server.base_url, "api_key_env": "ACME_API_KEY"}}
    return {
        "OPENAI_BASE_URL": model_server.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "ACME_API_KEY": PROVIDER_KEY,
        "STEPFLOW_MODELS": json.dumps(models),
    }


def assert_keys_were_used(result: PipelineResult, model_server: ScriptedModelServer) -> None:
    """The keys went where they belong, so their absence elsewhere means something."""
    assert result.step("ask").output == MODEL_OUTPUT
    assert result.step("note").status is StepStatus.SUCCEEDED
    acme = result.step("acme")
    assert acme.status is StepStatus.FAILED
    assert acme.error is not None and "Incorrect API key provided: Bearer ***" in acme.error
    sent = {request.authorization for request in model_server.requests}
    assert sent == {f"Bearer {TEST_API_KEY}", f"Bearer {PROVIDER_KEY}"}


async def everything_temporal_keeps(client: Client, workflow_id: str) -> bytes:
    """A run's and its agent steps' histories, descriptions (memo, search attributes)."""
    kept = []
    for each in (workflow_id, f"{workflow_id}/ask", f"{workflow_id}/acme"):
        handle = client.get_workflow_handle(each)
        history = await handle.fetch_history()
        assert history.events, each
        kept += [event.SerializeToString() for event in history.events]
        kept.append((await handle.describe()).raw_description.SerializeToString())
    return b"".join(kept)


def found(data: bytes | str, needles: list[str]) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [needle for needle in needles if needle.encode() in raw]


async def test_no_key_in_inputs_results_memo_search_attributes_histories_or_schedules(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in configure_models(model_server).items():
        monkeypatch.setenv(name, value)
    run = await stepflow.start_pipeline(keyed_pipeline(), {"topic": TOPIC})
    result = await stepflow.get_result(run.workflow_id)
    assert_keys_were_used(result, model_server)

    kept = await everything_temporal_keeps(stepflow.temporal, run.workflow_id)
    assert found(kept, [PROMPT, "calls two model providers"])  # the search can see payloads
    assert found(kept, KEYS) == []
    assert found(result.model_dump_json(), KEYS) == []
    status = await stepflow.status(run.workflow_id)
    assert found(status.model_dump_json(), KEYS) == []

    schedules = PipelineSchedules(stepflow)
    summary = await schedules.create(keyed_pipeline(), {"topic": TOPIC}, cron="0 0 1 1 *")
    try:
        described = await stepflow.temporal.get_schedule_handle(summary.schedule_id).describe()
        assert found(described.raw_description.SerializeToString(), [PROMPT])
        assert found(described.raw_description.SerializeToString(), KEYS) == []
    finally:
        await schedules.delete(summary.schedule_id)

    logged = capsys.readouterr()
    assert "model call failed" in logged.out + logged.err
    assert found(logged.out + logged.err, KEYS) == []


async def test_the_worker_process_logs_no_key_and_no_content(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    tmp_path: Path,
) -> None:
    with ScriptedModelServer() as model_server:
        env = tool_worker_env(
            temporal_env.client.service_client.config.target_host,
            task_queue,
            STEPFLOW_PAYLOAD_DIR=str(tmp_path / "payloads"),
            **configure_models(model_server),
        )
        log = tmp_path / "worker.log"
        async with running_worker(env, log):
            run = await stepflow.start_pipeline(keyed_pipeline(), {"topic": TOPIC})
            result = await stepflow.get_result(run.workflow_id)
        assert_keys_were_used(result, model_server)

    lines = log.read_text()
    events = [json.loads(line)["event"] for line in lines.splitlines() if line.startswith("{")]
    assert {"model call succeeded", "model call failed", "tool call succeeded"} <= set(events)
    assert found(lines, KEYS) == []
    assert found(lines, CONTENT) == []
