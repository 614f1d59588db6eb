"""Model chains: which model of an agent step's `model: [primary, backup, local]` answers.

A step whose `model` is a chain makes each model call with the first model still in
the running (`agent_loop.AgentLoop._call_chain` schedules the calls). This module
holds the rules it follows: which failures move on to the next model
(`FALLBACK_AFTER_ATTEMPTS`, `FALLBACK_AT_ONCE`), what a model passed over leaves
in the loop's state (`pass_over`), and the message of a call that every model failed.
"""

from __future__ import annotations

from temporalio import workflow

from stepflow.workflows.errors import ErrorType, StepFailure
from stepflow.workflows.models import AgentLoopState, PassedOver

FALLBACK_AFTER_ATTEMPTS = frozenset(
    {
        ErrorType.MODEL_RATE_LIMITED,
        ErrorType.MODEL_SERVER_ERROR,
        ErrorType.MODEL_TIMEOUT,
        ErrorType.MODEL_CONNECTION_ERROR,
        ErrorType.MODEL_REPLY_INVALID,
        ErrorType.TIMEOUT,  # Temporal's own timeouts of the call
    }
)
"""A model of a chain that still fails like this after `after_attempts` attempts is passed
over for this call; the next call tries it again (the trouble may have passed)."""

FALLBACK_AT_ONCE = frozenset(
    {
        ErrorType.MODEL_NOT_FOUND,
        ErrorType.MODEL_CONTEXT_EXCEEDED,
        ErrorType.MODEL_CONTENT_REFUSED,
        ErrorType.MODEL_NOT_CONFIGURED,
    }
)
"""Failures no retry fixes for this model but another model may: the next takes over after
one attempt, and this model sits out the step's later calls (the conversation only grows,
and an unknown model stays unknown). Every other failure (a rejected request, a spent
budget, a conversation too large for any call, the payload store, a model without the
price a cost budget needs: a configuration to fix, not to route around) fails the step as
it would without a chain."""

MAX_PASSED_OVER_ERROR = 500
"""Characters of a passed-over model's error kept in the loop's state and the step record."""

MAX_PASSED_OVER = 100
"""Passed-over entries a step keeps, the latest (about 60 KB at most)."""


def sitting_out(state: AgentLoopState) -> dict[str, PassedOver]:
    """The models of the chain out for the rest of the step, each with why."""
    return {p.model: p for p in state.passed_over if p.error_type in FALLBACK_AT_ONCE}


def moves_on(failure: StepFailure, exhausted: bool) -> bool:
    """Whether the next model of the chain takes over after this failure of a call.

    Any failure the call's retry policy would have tried again (`exhausted`: its
    attempts ran out) counts against the model, as do the failures another model
    may get past.
    """
    return exhausted or failure.error_type in FALLBACK_AFTER_ATTEMPTS | FALLBACK_AT_ONCE


def pass_over(
    state: AgentLoopState, number: int, model: str, failure: StepFailure, chain: list[str]
) -> PassedOver:
    """Note that `model` did not answer call `number`, and why; the next model takes over."""
    passed = PassedOver(
        call=number,
        model=model,
        error_type=str(failure.error_type),
        error=with_attempts(failure)[:MAX_PASSED_OVER_ERROR],
    )
    state.passed_over.append(passed)
    if len(state.passed_over) > MAX_PASSED_OVER:
        # Bounded: it travels in every continue-as-new, result and failure. The models
        # sitting out stay (the chain needs them); the oldest of the rest go.
        oldest = next(
            (i for i, p in enumerate(state.passed_over) if p.error_type not in FALLBACK_AT_ONCE),
            None,
        )
        if oldest is not None:
            del state.passed_over[oldest]
    if passed.error_type in FALLBACK_AT_ONCE:  # later calls start past the models out
        out = set(sitting_out(state))
        state.chain_at = next((i for i, m in enumerate(chain) if m not in out), len(chain))
    workflow.logger.warning(
        "model call %d: %s passed over (%s); the next model of the chain takes over",
        number,
        model,
        passed.error_type,
    )
    return passed


def with_attempts(failure: StepFailure) -> str:
    """`model API answered 429: slow down (after 2 attempts)`."""
    if failure.attempts > 1:
        return f"{failure.message} (after {failure.attempts} attempts)"
    return failure.message


def chain_failure_message(
    number: int,
    model: str,
    failure: StepFailure,
    passed: list[PassedOver],
    sitting_out: list[PassedOver],
) -> str:
    """Why a call of a chained step failed: the last model's error, and every model passed over.

    Without models passed over it reads as a single model's failure does.
    """
    if not passed and not sitting_out:
        return f"model call {number} failed: {failure.message}"
    reasons = [f"{p.model}: {p.error_type} at model call {p.call}: {p.error}" for p in sitting_out]
    reasons += [f"{p.model}: {p.error_type}: {p.error}" for p in passed]
    if failure.error_type in FALLBACK_AFTER_ATTEMPTS | FALLBACK_AT_ONCE:
        reasons.append(f"{model}: {failure.error_type}: {with_attempts(failure)}")
        return f"model call {number} failed on every model of the chain: {'; '.join(reasons)}"
    return (
        f"model call {number} failed on {model}: {failure.message} "
        f"(passed over: {'; '.join(reasons)})"
    )
