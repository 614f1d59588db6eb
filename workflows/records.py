"""What a run keeps about each step: its status, record and token usage; chat messages.

Durable contracts like the rest of `models`: the `status` query, the pipeline's
result and continue-as-new all carry them. Pure models: imported in the
workflow sandbox.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

ChatMessage = dict[str, Any]
"""One Chat Completions message as the API spells it (`role`, `content`, `tool_calls`...)."""


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    WAITING = "WAITING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"
    REUSED = "REUSED"
    """A rerun took the step's output from the run it reruns (`reused_from`)."""


QUIET = frozenset({StepStatus.PENDING, StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.REUSED})
"""Statuses of steps a big run's details leave out: nothing to look at."""

WITH_OUTPUT = frozenset({StepStatus.SUCCEEDED, StepStatus.REUSED})
"""Statuses of a step whose output its dependents read: it succeeded, here or in the run a
rerun took it from."""


class TokenUsage(BaseModel):
    """Tokens the model calls of a step (or a whole pipeline) used, as the model reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    model_calls: int = 0
    cached_tokens: int = Field(default=0, description="Of the prompt tokens, those cached.")
    cost: float = Field(
        default=0.0, description="US dollars, from the worker's model prices (0 without them)."
    )

    def plus(self, other: TokenUsage | None) -> TokenUsage:
        if other is None:
            return self
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            model_calls=self.model_calls + other.model_calls,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost=round(self.cost + other.cost, 9),
        )


UsageByModel = dict[str, TokenUsage]
"""Tokens and cost per model name."""


def add_by_model(into: UsageByModel, more: UsageByModel | None) -> UsageByModel:
    """`into` with `more` added, model by model (a new dict; neither is changed)."""
    merged = dict(into)
    for model, usage in (more or {}).items():
        merged[model] = merged[model].plus(usage) if model in merged else usage
    return merged


class PassedOver(BaseModel):
    """A model of a `model:` chain that did not answer a call, and why the next took over."""

    call: int = Field(description="The model call's number in its step.")
    model: str
    error_type: str
    error: str


class StepRecord(BaseModel):
    """What happened to one step."""

    id: str
    kind: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    reason: str | None = Field(default=None, description="Why the step was skipped or cancelled.")
    used_fallback: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None
    model: str | None = Field(
        default=None, description="Agent steps: the model that answered (`offline`: built-in)."
    )
    usage: TokenUsage | None = Field(default=None, description="Agent steps: tokens used.")
    tool_calls: int | None = Field(default=None, description="Agent steps: tool calls made.")
    model_call: int | None = Field(
        default=None, description="Agent steps: the number of the model call running or last made."
    )
    max_model_calls: int | None = Field(default=None, description="Agent steps: the step's limit.")
    waiting_for: Literal["approval", "input"] | None = Field(
        default=None, description="Approval and input steps: what the step waits for."
    )
    message: str | None = Field(
        default=None, description="Approval and input steps: what the person is asked (rendered)."
    )
    comment: str | None = Field(
        default=None, description="The comment given with an approval, rejection or cancel."
    )
    items: int | None = Field(default=None, description="for_each steps: instances in all.")
    items_done: int | None = Field(
        default=None, description="for_each steps: instances that ended (failed ones included)."
    )
    items_failed: int | None = Field(default=None, description="for_each steps: failed instances.")
    iteration: int | None = Field(
        default=None, description="Loop steps: the iteration running or last run."
    )
    max_iterations: int | None = Field(default=None, description="Loop steps: the limit.")
    child: str | None = Field(
        default=None, description="Loop and pipeline steps: the workflow id of the child run."
    )
    reused_from: str | None = Field(
        default=None, description="REUSED steps: the workflow id of the run the output is from."
    )
    cached: bool = Field(
        default=False, description="The output came from the result cache: nothing was called."
    )
    cached_from: str | None = Field(
        default=None, description="Cached steps: the workflow id of the run that computed it."
    )
    usage_by_model: UsageByModel | None = Field(
        default=None, description="Agent and plan steps: tokens and cost per model that answered."
    )
    passed_over: list[PassedOver] | None = Field(
        default=None, description="Agent steps with a model chain: the models that did not answer."
    )
    plan: dict[str, Any] | None = Field(
        default=None, description="Plan steps: the plan (`steps`, `outputs`) the model made."
    )

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at
