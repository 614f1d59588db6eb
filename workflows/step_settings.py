"""What a step runs with: its retry, timeout and cache settings over the pipeline's `defaults`
over the built-in ones, field by field. Pure functions of the spec (`workflows.spec`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from stepflow.workflows.spec import (
    BUILTIN_RETRY,
    DEFAULT_START_TO_CLOSE,
    ActivityStepBase,
    AgentStep,
    CacheSpec,
    ModelFallback,
    RetrySpec,
    StepDefaults,
    TimeoutSpec,
    ToolStep,
)


def _layered(*layers: BaseModel | None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is not None:
            merged.update(
                {
                    k: getattr(layer, k)
                    for k in type(layer).model_fields
                    if getattr(layer, k) is not None
                }
            )
    return merged


def effective_cache(step: ToolStep | AgentStep, defaults: StepDefaults) -> CacheSpec | None:
    """The step's cache settings: its own, else the pipeline's; `false` turns it off."""
    if step.cache is False:
        return None
    return step.cache or defaults.cache


def effective_retry(step: ActivityStepBase, defaults: StepDefaults) -> RetrySpec:
    """The step's retry settings over the pipeline's over the built-in ones, field by field."""
    return RetrySpec.model_validate(_layered(BUILTIN_RETRY, defaults.retry, step.retry))


def effective_timeout(
    step: ActivityStepBase, defaults: StepDefaults, override: TimeoutSpec | None = None
) -> TimeoutSpec:
    """The step's timeouts over the pipeline's, with a 5 minute start-to-close if none is set."""
    result = TimeoutSpec.model_validate(_layered(defaults.timeout, step.timeout, override))
    if result.start_to_close is None and result.schedule_to_close is None:
        result.start_to_close = DEFAULT_START_TO_CLOSE
    return result


BUILTIN_MODEL_RETRY = RetrySpec(max_attempts=5)
"""Model APIs rate-limit: their calls get two more attempts than tool calls by default."""

DEFAULT_MODEL_HEARTBEAT = timedelta(seconds=30)
"""The model activity heartbeats while it waits, so a lost worker's call is retried in 30 s."""


def model_call_retry(step: AgentStep, defaults: StepDefaults) -> RetrySpec:
    return RetrySpec.model_validate(
        _layered(BUILTIN_RETRY, BUILTIN_MODEL_RETRY, defaults.retry, step.retry, step.model_retry)
    )


def model_call_timeout(step: AgentStep, defaults: StepDefaults) -> TimeoutSpec:
    result = effective_timeout(step, defaults, step.model_timeout)
    if result.heartbeat is None:
        result.heartbeat = DEFAULT_MODEL_HEARTBEAT
    return result


def tool_call_retry(step: AgentStep, defaults: StepDefaults) -> RetrySpec:
    return RetrySpec.model_validate(
        _layered(BUILTIN_RETRY, defaults.retry, step.retry, step.tool_retry)
    )


def tool_call_timeout(step: AgentStep, defaults: StepDefaults) -> TimeoutSpec:
    return effective_timeout(step, defaults, step.tool_timeout)


def model_chain(step: AgentStep) -> list[str] | None:
    """The step's models in the order they take over (`model: [primary, backup]`), or None
    when the step names one model or none: then its calls run exactly as they always have."""
    return list(step.model) if isinstance(step.model, list) else None


def fallback_attempts(step: AgentStep) -> int:
    """Attempts a model of a chain gets before the next takes over (`model_fallback`)."""
    return (step.model_fallback or ModelFallback()).after_attempts


def chain_retry(retry: RetrySpec, attempts: int) -> RetrySpec:
    """The step's model retry for a model that is not the last of the chain: the same
    intervals (so `Retry-After` still sets the wait), `attempts` attempts in all."""
    return retry.model_copy(update={"max_attempts": attempts})
