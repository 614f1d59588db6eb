"""Tracing and metrics, both off by default and switched on by settings.

Tracing, `STEPFLOW_TRACING=console|otlp`: every client `runtime.connection.connect`
makes carries the SDK's OpenTelemetry interceptor (`runtime.tracing`), so the
`stepflow` command traces what it starts, and a worker traces every workflow and
activity it runs. The spans of one run (`name`: attributes):

- `StartWorkflow:stepflow_pipeline` (the client that started it)
- `RunWorkflow:stepflow_pipeline`: `stepflow.pipeline`, `stepflow.steps`; and
  `CompleteWorkflow:stepflow_pipeline` when it ends
- `StartActivity:tool_<name>`, `RunActivity:tool_<name>` (a tool step, or a tool
  call of an agent step): `stepflow.step_id`, `stepflow.tool`, `stepflow.attempt`,
  `stepflow.outcome`, `error.type`
- `StartChildWorkflow:stepflow_agent_step`, `RunWorkflow:stepflow_agent_step`
  (an agent step): `stepflow.pipeline`, `stepflow.step_id`, `gen_ai.request.model`
- `StartActivity:model_call`, `RunActivity:model_call`: `stepflow.step_id`,
  `stepflow.model_call`, `stepflow.attempt`, `gen_ai.request.model`,
  `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `stepflow.outcome`

Workflow spans are the SDK's: they mark a moment and last no time (a workflow
may run for days, across workers); activity spans last as long as the call.
No prompt, output or tool argument is ever an attribute.

Metrics, `STEPFLOW_METRICS_BIND=host:port`: the worker serves Prometheus'
`/metrics` there from the SDK's runtime: the SDK's own metrics (`temporal_*`:
workflow and activity tasks, their latencies, slots, polls) and Stepflow's:

- `stepflow_steps_total{pipeline,kind,status}`: steps that reached a final status
  (succeeded, failed, timed_out, skipped, cancelled), counted by the pipeline workflow
- `stepflow_model_tokens_total{model,token_type}`: `token_type` prompt or completion
- `stepflow_model_cost_total{model}`: US dollars the model calls cost, from the models'
  prices (`STEPFLOW_MODELS`); a gauge that only grows, since the SDK's counters count
  whole numbers: per worker process, like a counter (reset when the worker restarts)
- `stepflow_model_call_duration_seconds{model,outcome}`: histogram, outcome ok or error
- `stepflow_tool_duration_seconds{tool,outcome}`: histogram

Stepflow's metrics also carry the SDK's labels: `namespace`, `task_queue`, and
`workflow_type` (steps) or `activity_type` (the others). Durations of the SDK's
own histograms are in milliseconds, as Temporal's dashboards for Core-based SDKs
expect; Stepflow's are in seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from stepflow.runtime.settings import Settings
from stepflow.workflows.step_metrics import STEPS_METRIC

if TYPE_CHECKING:
    from temporalio.client import Interceptor

STEPS = STEPS_METRIC  # counted by the pipeline workflow (workflows.step_metrics)
MODEL_TOKENS = "stepflow_model_tokens_total"
MODEL_COST = "stepflow_model_cost_total"
MODEL_CALL_DURATION = "stepflow_model_call_duration_seconds"
TOOL_DURATION = "stepflow_tool_duration_seconds"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
"""Seconds, for Stepflow's histograms; the SDK's default buckets are for milliseconds."""


class TelemetryError(Exception):
    """Tracing or metrics cannot start as configured; the message names the setting."""


def configure_tracing(settings: Settings, *, worker: bool = False) -> None:
    """Send this process's spans where STEPFLOW_TRACING says; the first call decides.

    Args:
        worker: Export in the background, flushed by `shutdown_tracing` at exit;
            otherwise (a command, which exits without waiting for a background
            thread) each span is exported as it ends.

    Raises:
        TelemetryError: `otlp` without the OTLP exporter installed.
    """
    if settings.tracing == "off":
        return
    from stepflow.runtime import tracing  # OpenTelemetry's SDK: only imported when asked for

    try:
        tracing.configure(
            settings.tracing, service="stepflow-worker" if worker else "stepflow", batch=worker
        )
    except tracing.TracingSetupError as err:
        raise TelemetryError(str(err)) from None


def tracing_interceptors(settings: Settings) -> list[Interceptor]:
    """The client interceptors STEPFLOW_TRACING asks for (a worker's client passes them on).

    Raises:
        TelemetryError: `otlp` without the OTLP exporter installed.
    """
    if settings.tracing == "off":
        return []
    configure_tracing(settings)
    from stepflow.runtime import tracing

    return [tracing.StepflowTracingInterceptor()]


def shutdown_tracing(settings: Settings) -> None:
    """Export the spans still queued (a worker, before it exits)."""
    if settings.tracing != "off":
        from stepflow.runtime import tracing

        tracing.shutdown()


def metrics_address(settings: Settings) -> str | None:
    """Where the worker serves /metrics: STEPFLOW_METRICS_BIND, as an IP and a port.

    `9464` or `:9464` mean every interface, `localhost:9464` means 127.0.0.1.
    """
    bind = (settings.metrics_bind or "").strip()
    if not bind:
        return None
    host, sep, port = bind.rpartition(":")
    if not sep:
        host, port = "", bind
    if host in ("", "*"):
        host = "0.0.0.0"
    elif host == "localhost":
        host = "127.0.0.1"
    return f"{host}:{port}"


def metrics_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime that serves Prometheus metrics, if STEPFLOW_METRICS_BIND is set.

    The worker's client is made with it (`Client.connect(runtime=...)`), so the
    SDK's metrics and those Stepflow records through the SDK's meters come out
    of one endpoint.

    Raises:
        TelemetryError: the address is not `IP:port`, or is taken.
    """
    address = metrics_address(settings)
    if address is None:
        return None
    buckets = list(DURATION_BUCKETS)
    try:
        return Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(
                    bind_address=address,
                    histogram_bucket_overrides={
                        TOOL_DURATION: buckets,
                        MODEL_CALL_DURATION: buckets,
                    },
                )
            )
        )
    except ValueError as err:  # the core's words: "Invalid Prometheus address: ...", "in use"
        raise TelemetryError(
            f"STEPFLOW_METRICS_BIND={settings.metrics_bind}: cannot serve metrics there: {err} "
            "(expected IP:port, e.g. 0.0.0.0:9464, on a free port)"
        ) from None


def describe(settings: Settings) -> dict[str, str]:
    """What the worker says at start about its telemetry."""
    address = metrics_address(settings)
    return {
        "tracing": settings.tracing,
        "metrics": f"http://{address}/metrics" if address else "off",
    }
