"""OpenTelemetry tracing through the SDK's interceptor, with Stepflow's attributes.

`StepflowTracingInterceptor` is the SDK's `TracingInterceptor`: set on a client,
it traces what the client starts and, on a worker built from that client, every
workflow and activity. Stepflow adds two things on the workflow side:

- the `RunWorkflow:` span of a pipeline names the pipeline, that of an agent step
  the pipeline and the step (activities add their own attributes, see
  `activities.telemetry`);
- a run started without a trace (by a schedule, the `temporal` CLI, or a client
  with tracing off) still gets one, whose trace id derives from the workflow id
  and its first run id (`run_trace_id`), so every worker and every replay puts
  the run's spans, its agent steps' included, in that one trace. Its root is the
  parent of `RunWorkflow:`, a span no process reports.

Imported only when tracing is on (`runtime.telemetry`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, cast

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.util.types import AttributeValue
from temporalio import workflow
from temporalio.contrib.opentelemetry import TracingInterceptor, TracingWorkflowInboundInterceptor
from temporalio.worker import ExecuteWorkflowInput, WorkflowInterceptorClassInput

from stepflow.workflows.models import AGENT_STEP_WORKFLOW, AgentStepInput, PipelineInput
from stepflow.workflows.pipeline import PIPELINE_WORKFLOW


class TracingSetupError(Exception):
    """The exporter STEPFLOW_TRACING names cannot be made."""


_provider: TracerProvider | None = None
"""The tracer provider this module installed, flushed by `shutdown`."""


def configure(exporter: str, *, service: str, batch: bool) -> None:
    """Send this process's spans to `exporter` (console, otlp); once per process.

    A process that set up OpenTelemetry itself (an application that embeds
    `StepflowClient`) keeps its own tracer provider, and Stepflow's spans go there.

    Args:
        exporter: `console` (JSON lines on stderr) or `otlp` (OTEL_EXPORTER_OTLP_*).
        service: `service.name`, unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say.
        batch: Export in the background (a worker) rather than as each span ends (a
            command, which exits without waiting for a background thread).

    Raises:
        TracingSetupError: the OTLP exporter is not installed.
    """
    global _provider
    if _provider is not None or not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    ):
        return
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)
    span_exporter = _exporter(exporter)
    provider.add_span_processor(
        BatchSpanProcessor(span_exporter) if batch else SimpleSpanProcessor(span_exporter)
    )
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown() -> None:
    """Export the spans still queued; before the process exits."""
    if _provider is not None:
        _provider.shutdown()


def _exporter(kind: str) -> SpanExporter:
    if kind == "console":
        return ConsoleSpanExporter(
            out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    transport = "grpc" if protocol.strip() == "grpc" else "http"
    try:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{transport}")
        module = importlib.import_module(f"{module.__name__}.trace_exporter")
    except ImportError:
        raise TracingSetupError(
            "STEPFLOW_TRACING=otlp needs the OTLP exporter: "
            f"pip install opentelemetry-exporter-otlp-proto-{transport}"
        ) from None
    exporter: SpanExporter = module.OTLPSpanExporter()  # endpoint etc. from OTEL_EXPORTER_OTLP_*
    return exporter


def run_trace_id(workflow_id: str, first_run_id: str) -> int:
    """The trace id of a run started without a trace: the same on every worker and replay."""
    return _run_parent(workflow_id, first_run_id).trace_id


def _run_parent(workflow_id: str, first_run_id: str) -> trace.SpanContext:
    """The root of a run started without a trace: made up from the run, never reported."""
    digest = hashlib.sha256(f"{workflow_id}\n{first_run_id}".encode()).digest()
    return trace.SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )


class StepflowTracingInterceptor(TracingInterceptor):
    """The SDK's tracing interceptor, with Stepflow's workflow spans (see the module)."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[TracingWorkflowInboundInterceptor]:
        super().workflow_interceptor_class(input)  # registers the span-making extern function
        return _WorkflowTracing


class _WorkflowTracing(TracingWorkflowInboundInterceptor):
    def _load_workflow_context_carrier(self) -> dict[str, Any] | None:
        carrier = super()._load_workflow_context_carrier()
        if carrier is None:
            info = workflow.info()
            parent = _run_parent(info.workflow_id, info.first_execution_run_id)
            carrier = {}
            self.text_map_propagator.inject(
                carrier, trace.set_span_in_context(trace.NonRecordingSpan(parent))
            )
            self._workflow_context_carrier = carrier
        return carrier

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        # The SDK's `execute_workflow`, with Stepflow's attributes on the span.
        workflow_type = workflow.info().workflow_type
        with self._top_level_workflow_context(success_is_complete=True):
            self._completed_span(
                f"RunWorkflow:{workflow_type}",
                kind=trace.SpanKind.SERVER,
                additional_attributes=_workflow_attributes(workflow_type, input.args),
            )
            return await self.next.execute_workflow(input)


def _workflow_attributes(workflow_type: str, args: Sequence[Any]) -> dict[str, AttributeValue]:
    # Told apart by workflow type, not `isinstance`: the sandbox has its own copy of
    # Stepflow's input classes, which the ones imported here do not match.
    first = args[0] if args else None
    if workflow_type == PIPELINE_WORKFLOW:
        pipeline = cast(PipelineInput, first)
        return {"stepflow.pipeline": pipeline.spec.name, "stepflow.steps": len(pipeline.spec.steps)}
    if workflow_type == AGENT_STEP_WORKFLOW:
        agent = cast(AgentStepInput, first)
        attributes: dict[str, AttributeValue] = {
            "stepflow.pipeline": agent.pipeline,
            "stepflow.step_id": agent.step.id,
        }
        if agent.step.model:
            attributes["gen_ai.request.model"] = agent.step.model
        return attributes
    return {}
