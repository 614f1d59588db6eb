"""Tracing and metrics: the spans a run leaves, the worker's /metrics, and both off by default.

The spans are read from OpenTelemetry's in-memory exporter (a worker in this
process) or from the console exporter's JSON lines (worker and `stepflow run`
as processes); the metrics from the endpoint a worker process serves.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from stepflow.client.api import StepflowClient
from stepflow.runtime.connection import connect
from stepflow.runtime.settings import Settings
from stepflow.runtime.telemetry import metrics_address, metrics_runtime, tracing_interceptors
from stepflow.runtime.tracing import StepflowTracingInterceptor, run_trace_id
from stepflow.worker import WORKER_READY_LINE, WORKFLOWS, build_worker
from stepflow.workflows.models import PipelineSpec, PipelineStatus, StepStatus
from tests.conftest import TEST_TOOL_MODULES
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import TEST_API_KEY, ScriptedModelServer, text, tool_calls
from tests.support.processes import (
    ROOT,
    free_port,
    ok,
    process_env,
    stepflow_cli,
)
from tests.support.waiting import wait_until
from tests.support.worker_processes import running_worker

SECRET_INPUT = "the-confidential-brief-7f3a"
SECRET_REPLY = "the-confidential-answer-91c2"


def traced_pipeline() -> PipelineSpec:
    """A tool step (echo: a sync tool), one that fails, and an agent step that calls `record`."""
    return pipeline(
        step("fetch", "echo", args={"value": SECRET_INPUT}),
        step(
            "broken",
            "fail",
            args={"message": "no"},
            retry={"max_attempts": 1},
            on_failure="continue",
        ),
        agent("write", tools=["record"], depends_on=["fetch"], input="{{ steps.fetch.output }}"),
        name="traced",
    )


def play_agent(server: ScriptedModelServer, journal: str) -> None:
    server.play(
        tool_calls(("record", {"journal": journal, "value": "noted"}), usage=(100, 10)),
        text(SECRET_REPLY, usage=(200, 5)),
    )


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def traced(client: Client, provider: TracerProvider) -> Client:
    """The same connection, with the tracing interceptor on it (and so on its workers)."""
    interceptor = StepflowTracingInterceptor(tracer=provider.get_tracer("test"))
    config = client.config()
    config["interceptors"] = [interceptor]
    return Client(**config)


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: list[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = [
        s
        for s in named(spans, name)
        if all((s.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    """The names of the span's parents, nearest first, as far as they were reported."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    names = []
    parent = span.parent
    while parent is not None and parent.span_id in by_id:
        found = by_id[parent.span_id]
        names.append(found.name)
        parent = found.parent
    return names


# -- tracing ------------------------------------------------------------------------------------


async def test_a_traced_run_has_spans_for_the_run_its_steps_model_calls_and_tool_calls(
    temporal_client: Client,
    settings: Settings,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    provider, exporter = spans
    client = traced(temporal_client, provider)
    play_agent(model_server, journal)
    async with build_worker(client, settings):
        result = await StepflowClient(client, settings=settings).run_pipeline(traced_pipeline())
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    finished = list(exporter.get_finished_spans())

    start = one(finished, "StartWorkflow:stepflow_pipeline")
    run = one(finished, "RunWorkflow:stepflow_pipeline")
    assert run.attributes is not None
    assert (run.attributes["stepflow.pipeline"], run.attributes["stepflow.steps"]) == ("traced", 3)
    # The tool step: one activity (echo runs in the worker's thread pool).
    fetch = one(finished, "RunActivity:tool_echo", **{"stepflow.step_id": "fetch"})
    assert fetch.attributes is not None
    assert fetch.attributes["stepflow.tool"] == "echo"
    assert fetch.attributes["stepflow.attempt"] == 1
    assert fetch.attributes["stepflow.outcome"] == "ok"
    broken = one(finished, "RunActivity:tool_fail", **{"stepflow.step_id": "broken"})
    assert broken.attributes is not None
    assert (broken.attributes["stepflow.outcome"], broken.attributes["error.type"]) == (
        "error",
        "RuntimeError",
    )
    assert broken.status.status_code is StatusCode.ERROR
    # The agent step: a child workflow, its model calls and its tool call.
    one(finished, "RunWorkflow:stepflow_agent_step", **{"stepflow.step_id": "write"})
    calls = named(finished, "RunActivity:model_call")
    seen = sorted(
        (
            a["stepflow.model_call"],
            a["stepflow.step_id"],
            a["gen_ai.request.model"],
            a["gen_ai.usage.input_tokens"],
            a["gen_ai.usage.output_tokens"],
        )
        for a in (dict(c.attributes or {}) for c in calls)
    )
    assert seen == [(1, "write", "gpt-4o-mini", 100, 10), (2, "write", "gpt-4o-mini", 200, 5)]
    one(finished, "RunActivity:tool_record", **{"stepflow.step_id": "write"})

    # One trace, rooted in the client's span, through the child workflow to its activities.
    assert {s.context.trace_id for s in finished if s.context} == {start.context.trace_id}
    assert ancestors(calls[0], finished) == [
        "StartActivity:model_call",
        "StartChildWorkflow:stepflow_agent_step",
        "StartWorkflow:stepflow_pipeline",
    ]
    assert ancestors(fetch, finished) == [
        "StartActivity:tool_echo",
        "StartWorkflow:stepflow_pipeline",
    ]
    assert ancestors(run, finished) == ["StartWorkflow:stepflow_pipeline"]
    # Activity spans last as long as the call; the run's input and the model's answer are
    # nowhere in the attributes.
    assert all(c.end_time and c.start_time and c.end_time > c.start_time for c in calls)
    values = json.dumps([dict(s.attributes or {}) for s in finished])
    assert SECRET_INPUT not in values and SECRET_REPLY not in values


async def test_a_run_started_without_a_trace_gets_one_of_its_own(
    temporal_client: Client,
    settings: Settings,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    """A schedule, the temporal CLI or an untraced client: the worker's spans still form one trace."""
    provider, exporter = spans
    play_agent(model_server, journal)
    async with build_worker(traced(temporal_client, provider), settings):
        plain = StepflowClient(temporal_client, settings=settings)  # no tracing interceptor
        run = await plain.start_pipeline(traced_pipeline())
        result = await plain.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    finished = list(exporter.get_finished_spans())

    assert not named(finished, "StartWorkflow:stepflow_pipeline")
    expected = run_trace_id(run.workflow_id, run.run_id)
    assert {s.context.trace_id for s in finished if s.context} == {expected}
    names = {s.name for s in finished}
    assert {
        "RunWorkflow:stepflow_pipeline",
        "RunWorkflow:stepflow_agent_step",
        "RunActivity:tool_echo",
        "RunActivity:model_call",
        "RunActivity:tool_record",
    } <= names
    call = named(finished, "RunActivity:model_call")[0]
    assert ancestors(call, finished) == [
        "StartActivity:model_call",
        "StartChildWorkflow:stepflow_agent_step",
    ]


async def test_committed_histories_replay_with_tracing_on_and_make_no_spans(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Tracing adds headers, never commands; spans are made on first execution only."""
    provider, exporter = spans
    replayer = Replayer(
        workflows=WORKFLOWS,
        data_converter=pydantic_data_converter,
        interceptors=[StepflowTracingInterceptor(tracer=provider.get_tracer("test"))],
    )
    paths = sorted((ROOT / "tests" / "histories").glob("*.json"))
    histories = [
        WorkflowHistory.from_json(saved["workflow_id"], saved["history"])
        for saved in (json.loads(path.read_text()) for path in paths)
    ]
    failures = []
    for history in histories:
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is not None:
            failures.append((history.workflow_id, result.replay_failure))
    assert len(histories) > 10 and failures == []
    assert exporter.get_finished_spans() == ()


# -- metrics and exporters, with worker processes ---------------------------------------------


Sample = tuple[str, dict[str, str], float]
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(body: str) -> list[Sample]:
    """Prometheus' text format: one (name, labels, value) per sample line."""
    samples = []
    for line in body.splitlines():
        match = _LINE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    return sum(v for n, found, v in samples if n == name and labels.items() <= found.items())


@pytest.fixture
def worker_env(
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> dict[str, str]:
    return process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_TOOL_MODULES=TEST_TOOL_MODULES,
        STEPFLOW_WORKSPACE=str(tmp_path / "workspace"),
        OPENAI_BASE_URL=model_server.base_url,
        OPENAI_API_KEY=TEST_API_KEY,
    )


async def test_the_worker_serves_the_sdks_and_stepflows_metrics(
    worker_env: dict[str, str],
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    spec = pipeline(
        step("fetch", "echo", args={"value": 1}),
        step(
            "broken",
            "fail",
            args={"message": "no"},
            retry={"max_attempts": 1},
            on_failure="continue",
        ),
        step("after_broken", "echo", depends_on=["broken"]),
        agent("write", tools=["record"], depends_on=["fetch"]),
        name="metered",
    )
    play_agent(model_server, journal)
    log = tmp_path / "worker.log"
    async with running_worker({**worker_env, "STEPFLOW_METRICS_BIND": address}, log):
        ready = next(
            json.loads(line) for line in log.read_text().splitlines() if WORKER_READY_LINE in line
        )
        assert ready["metrics"] == f"http://{address}/metrics" and ready["tracing"] == "off"
        result = await stepflow.run_pipeline(spec)
        assert [s.status for s in result.steps] == [
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.SKIPPED,
            StepStatus.SUCCEEDED,
        ]

        samples: list[Sample] = []
        async with httpx.AsyncClient() as http:

            async def scraped_all() -> bool:
                """Recorded as the run went; wait for the last of them rather than assume."""
                response = await http.get(f"http://{address}/metrics")
                response.raise_for_status()
                samples[:] = parse_metrics(response.text)
                return (
                    value(samples, "stepflow_steps_total", pipeline="metered") == 4
                    and value(samples, "temporal_workflow_completed") == 2
                )

            await wait_until(scraped_all, "all the run's metrics to appear")

    def steps(kind: str, status: str) -> float:
        return value(samples, "stepflow_steps_total", pipeline="metered", kind=kind, status=status)

    assert (steps("tool", "succeeded"), steps("tool", "failed"), steps("tool", "skipped")) == (
        1,
        1,
        1,
    )
    assert steps("agent", "succeeded") == 1
    step_labels = next(labels for n, labels, _ in samples if n == "stepflow_steps_total")
    assert step_labels["workflow_type"] == "stepflow_pipeline"
    assert step_labels["task_queue"] == worker_env["STEPFLOW_TASK_QUEUE"]

    tokens = "stepflow_model_tokens_total"
    assert value(samples, tokens, model="gpt-4o-mini", token_type="prompt") == 300
    assert value(samples, tokens, model="gpt-4o-mini", token_type="completion") == 15
    calls = "stepflow_model_call_duration_seconds_count"
    assert value(samples, calls, model="gpt-4o-mini", outcome="ok") == 2
    tools = "stepflow_tool_duration_seconds_count"
    assert value(samples, tools, tool="echo", outcome="ok") == 1  # the skipped echo never ran
    assert value(samples, tools, tool="record", outcome="ok") == 1
    assert value(samples, tools, tool="fail", outcome="error") == 1
    buckets = [
        labels["le"] for n, labels, _ in samples if n == "stepflow_tool_duration_seconds_bucket"
    ]
    assert "0.005" in buckets and "600" in buckets  # seconds, not the SDK's millisecond buckets

    # The SDK's own metrics, from the same endpoint.
    assert value(samples, "temporal_workflow_completed", workflow_type="stepflow_pipeline") == 1
    assert value(samples, "temporal_workflow_completed", workflow_type="stepflow_agent_step") == 1
    assert (
        value(samples, "temporal_activity_execution_latency_count", activity_type="model_call") == 2
    )


async def test_spans_of_a_run_started_by_the_cli_join_the_workers_in_one_trace(
    worker_env: dict[str, str],
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
) -> None:
    """STEPFLOW_TRACING=console in both processes: JSON spans on stderr, linked by the headers."""
    env = {**worker_env, "STEPFLOW_TRACING": "console"}
    path = tmp_path / "traced.yaml"
    path.write_text(traced_pipeline().model_dump_json())  # JSON is YAML
    play_agent(model_server, journal)
    log = tmp_path / "worker.log"
    # Stopped with SIGTERM on the way out: the worker exports the spans still queued, then exits.
    async with running_worker(env, log):
        done = ok(await stepflow_cli(env, "run", str(path), "--json"))
    assert json.loads(done.stdout)["status"] == "SUCCEEDED"

    def spans_in(text: str) -> list[dict[str, Any]]:
        found = []
        for line in text.splitlines():
            if line.startswith("{") and '"span_id"' in line:
                found.append(json.loads(line))
        return found

    cli = spans_in(done.stderr)
    worker = spans_in(log.read_text())
    start = next(s for s in cli if s["name"] == "StartWorkflow:stepflow_pipeline")
    assert start["resource"]["attributes"]["service.name"] == "stepflow"
    by_name = {s["name"]: s for s in worker}
    run = by_name["RunWorkflow:stepflow_pipeline"]
    assert run["context"]["trace_id"] == start["context"]["trace_id"]
    assert run["parent_id"] == start["context"]["span_id"]
    assert run["resource"]["attributes"]["service.name"] == "stepflow-worker"
    tokens = [
        (
            s["attributes"]["gen_ai.usage.input_tokens"],
            s["attributes"]["gen_ai.usage.output_tokens"],
        )
        for s in worker
        if s["name"] == "RunActivity:model_call"
    ]
    assert sorted(tokens) == [(100, 10), (200, 5)]
    assert all(s["context"]["trace_id"] == start["context"]["trace_id"] for s in worker)
    assert SECRET_INPUT not in json.dumps([s["attributes"] for s in cli + worker])


# -- off by default, and bad settings -----------------------------------------------------------


async def test_tracing_and_metrics_are_off_by_default(
    temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    assert (settings.tracing, settings.metrics_bind) == ("off", None)
    assert tracing_interceptors(settings) == []
    assert metrics_runtime(settings) is None
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    client = await connect(settings=settings)
    assert list(client.config()["interceptors"]) == []


@pytest.mark.parametrize(
    ("bind", "address"),
    [
        ("9464", "0.0.0.0:9464"),
        (":9464", "0.0.0.0:9464"),
        ("localhost:9464", "127.0.0.1:9464"),
        ("10.0.0.5:9000", "10.0.0.5:9000"),
        ("[::]:9464", "[::]:9464"),
    ],
)
def test_the_metrics_address_is_read_generously(bind: str, address: str) -> None:
    assert metrics_address(Settings(metrics_bind=bind)) == address


async def worker_error(env: dict[str, str]) -> str:
    """Start `python worker.py`, expect exit 2 and one line on stderr; return that line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 2 and len(lines) == 1, stderr.decode()
    return lines[0]


async def test_a_taken_metrics_port_stops_the_worker_with_one_line(
    worker_env: dict[str, str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        line = await worker_error({**worker_env, "STEPFLOW_METRICS_BIND": address})
    assert "STEPFLOW_METRICS_BIND" in line and "in use" in line


async def test_an_unknown_tracing_exporter_is_refused_with_one_line() -> None:
    line = await worker_error(process_env("127.0.0.1:1", STEPFLOW_TRACING="jaeger"))
    assert line.startswith("stepflow worker: invalid settings: STEPFLOW_TRACING")


async def test_otlp_without_its_exporter_says_what_to_install() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the OTLP exporter is installed here")
    line = await worker_error(process_env("127.0.0.1:1", STEPFLOW_TRACING="otlp"))
    assert "pip install opentelemetry-exporter-otlp-proto-http" in line
