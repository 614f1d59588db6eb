"""What a spec's steps are set with: retry, timeouts, cache, budget, model fallback, inputs.

The leaves of the pipeline spec (`spec`, which re-exports every name here): small
models a step or the pipeline's `defaults` holds, and the base every spec model
shares. Durable contracts, pure: imported in the workflow sandbox.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stepflow.workflows.durations import PositiveDuration

DEFAULT_START_TO_CLOSE = timedelta(minutes=5)
"""Applies when neither the step nor the pipeline sets a start-to-close or schedule-to-close."""


class SpecModel(BaseModel):
    """Base of everything a user writes: unknown keys (typos) are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class RetrySpec(SpecModel):
    """How Temporal retries a step's activity.

    A field left out (None) is inherited: from the pipeline's `defaults`, then
    from the built-in default named in its description. None rather than the
    default itself, so that a step setting only `max_attempts` still gets the
    pipeline's intervals, also after the spec has travelled through history.
    """

    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=2_147_483_647,  # Temporal keeps it as an int32
        description="Attempts in all, the first included (default 3).",
    )
    initial_interval: PositiveDuration | None = Field(
        default=None, description="Wait before the first retry (default 1s)."
    )
    backoff_coefficient: float | None = Field(
        default=None,
        ge=1.0,
        allow_inf_nan=False,
        description="Each retry waits this many times longer (default 2).",
    )
    max_interval: PositiveDuration | None = Field(
        default=None, description="Longest wait between retries (default 100 x initial)."
    )
    non_retryable_errors: list[str] | None = Field(
        default=None,
        description="Error type names (exception class names) that fail the step at once.",
    )


BUILTIN_RETRY = RetrySpec(
    max_attempts=3,
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    non_retryable_errors=[],
)


class TimeoutSpec(SpecModel):
    """Temporal's activity timeouts; a field left out (None) is inherited from the defaults."""

    start_to_close: PositiveDuration | None = Field(
        default=None, description="Longest a single attempt may run."
    )
    schedule_to_close: PositiveDuration | None = Field(
        default=None, description="Longest the step may take, all retries included."
    )
    heartbeat: PositiveDuration | None = Field(
        default=None, description="An attempt that does not heartbeat this often is retried."
    )


class Fallback(SpecModel):
    """`on_failure: {fallback: VALUE}`: the step's output becomes VALUE and dependents run."""

    fallback: Any = Field(description="The step's output when it fails for good.")


OnFailure = Literal["fail", "continue"] | Fallback
"""`fail` ends the pipeline, `continue` skips the step's dependents, a fallback stands in."""


class CacheSpec(SpecModel):
    """`cache: {ttl: 7d}`: a step's result is kept across runs and taken again while fresh.

    The key is a hash of what determines the result: a tool's name, version and
    arguments; an agent's model, instructions, input, tools, output schema and the
    outputs it sees. Failures are never kept.
    """

    ttl: PositiveDuration = Field(description="How long a kept result may be taken again.")


class BudgetSpec(SpecModel):
    """`budget: {tokens: 200000, cost: 2.50}`: what model calls may spend, at most.

    On a pipeline it caps the whole run (children included); on an agent or plan
    step, the step (each for_each instance on its own). Once spent, no new model
    call starts there: the steps that needed one fail `BudgetExceeded`.
    """

    tokens: int | None = Field(default=None, ge=1, description="Tokens in all (prompt + output).")
    cost: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="US dollars, from the prices in the worker's model configuration.",
    )

    @model_validator(mode="after")
    def _something(self) -> BudgetSpec:
        if self.tokens is None and self.cost is None:
            raise ValueError("a budget needs `tokens`, `cost` or both")
        return self


class ModelFallback(SpecModel):
    """`model_fallback: {after_attempts: 2}`: when the next model of a `model:` chain takes over."""

    after_attempts: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Retryable failures (429, 5xx, timeout, invalid reply) of one model before "
        "the next takes over; failures only another model can fix move on at once.",
    )


ModelChoice = str | list[str]
"""A model name, or a chain `[primary, backup, ...]` whose next model takes over on failure."""


StepCache = CacheSpec | Literal[False]
"""`cache: {ttl: ...}` keeps the step's result; `cache: false` never looks (over `defaults`)."""


class StepDefaults(SpecModel):
    """Pipeline-wide retry and timeout settings; a step overrides them field by field."""

    retry: RetrySpec = Field(default_factory=RetrySpec, description="Every step's retry policy.")
    timeout: TimeoutSpec = Field(
        default_factory=TimeoutSpec, description="Every step's activity timeouts."
    )
    cache: CacheSpec | None = Field(
        default=None, description="Tool and agent steps' result cache (`{ttl: 7d}`); absent: none."
    )


InputType = Literal["string", "integer", "number", "boolean", "object", "array", "any"]


class InputSpec(SpecModel):
    """A pipeline input. Without a `default` it is required."""

    type: InputType = Field(
        default="string", description="What the value must be; non-string values are JSON."
    )
    default: Any = Field(
        default=None, description="The value when a run gives none; without it, required."
    )
    description: str | None = Field(default=None, description="What the input is for.")

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set
