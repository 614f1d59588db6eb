"""What model calls and tool calls add to tracing and metrics.

Attributes go on the span the SDK's tracing interceptor opened for the activity
(`RunActivity:tool_<name>`, `RunActivity:model_call`); with tracing off there is
no such span and setting them costs nothing. Metrics go to the activity's
metric meter, which the worker's runtime exports (`STEPFLOW_METRICS_BIND`); with
metrics off it is the SDK's no-op meter. The list of spans and metrics is in
`runtime.telemetry`.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from temporalio import activity, common
from temporalio.exceptions import ApplicationError

from stepflow.runtime.telemetry import (
    MODEL_CALL_DURATION,
    MODEL_COST,
    MODEL_TOKENS,
    TOOL_DURATION,
)
from stepflow.workflows.models import TokenUsage

_cost_so_far: dict[tuple[str, str, str], float] = {}
"""USD this process's model calls cost, by namespace, task queue and model: the metric's value.

`stepflow_model_cost_total` is a gauge set to this running total (the SDK's counters add
whole numbers only, and costs are fractions of a cent).
"""


def tool_call_started(step_id: str, tool: str, attempt: int) -> None:
    """Name the step, tool and attempt on the tool call's span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {"stepflow.step_id": step_id, "stepflow.tool": tool, "stepflow.attempt": attempt}
        )


def tool_call_ended(tool: str, started: float, error: BaseException | None = None) -> None:
    """Time the tool call (`started`: `time.monotonic()` when it began) and say how it ended."""
    outcome = "ok" if error is None else "error"
    activity.metric_meter().create_histogram_float(
        TOOL_DURATION, "Tool calls' run time, by tool and outcome (ok, error).", "s"
    ).record(time.monotonic() - started, {"tool": tool, "outcome": outcome})
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("stepflow.outcome", outcome)
        if error is not None:
            error_type = error.type if isinstance(error, ApplicationError) else None
            span.set_attribute("error.type", error_type or type(error).__name__)


def _count_cost(meter: common.MetricMeter, model: str, cost: float) -> None:
    """Add `cost` to the model's running total and report the total."""
    info = activity.info()
    key = (info.namespace, info.task_queue, model)
    total = _cost_so_far[key] = _cost_so_far.get(key, 0.0) + cost
    meter.create_gauge_float(
        MODEL_COST, "US dollars the model calls cost, by model (from STEPFLOW_MODELS prices)."
    ).set(round(total, 9), {"model": model})


def model_call_started(step_id: str, call_number: int, model: str) -> None:
    """Name the step, the call's number in the step and the model on the model call's span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {
                "stepflow.step_id": step_id,
                "stepflow.model_call": call_number,
                "stepflow.attempt": activity.info().attempt,
                # The OpenTelemetry semantic conventions for generative AI.
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
            }
        )


def model_call_ended(
    model: str, started: float, usage: TokenUsage | None = None, error_type: str | None = None
) -> None:
    """Time the model call and count its tokens (`usage`; None when it failed)."""
    outcome = "ok" if error_type is None else "error"
    meter = activity.metric_meter()
    meter.create_histogram_float(
        MODEL_CALL_DURATION, "Model calls' time, by model and outcome (ok, error).", "s"
    ).record(time.monotonic() - started, {"model": model, "outcome": outcome})
    if usage is not None:
        tokens = meter.create_counter(
            MODEL_TOKENS, "Tokens the model calls used, by model and type (prompt, completion)."
        )
        tokens.add(usage.prompt_tokens, {"model": model, "token_type": "prompt"})
        tokens.add(usage.completion_tokens, {"model": model, "token_type": "completion"})
        if usage.cost > 0:
            _count_cost(meter, model, usage.cost)
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("stepflow.outcome", outcome)
    if usage is not None:
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": usage.prompt_tokens,
                "gen_ai.usage.output_tokens": usage.completion_tokens,
            }
        )
    if error_type is not None:
        span.set_attribute("error.type", error_type)
