"""Budgets in model calls: price a call's tokens, check the run's ledgers before it, charge after.

The ledgers are small workflows, one per budgeted run (`workflows.budget`): a
model call asks each one above it what it has spent (a query: no history
event), and after its reply adds what it cost (an update with start: the first
charge starts the ledger; the update id names the call's attempt, so a repeated
request counts once). Only calls under a budget do either; a call with no
ledger costs nothing more than before.

- A ledger that does not exist yet has spent nothing. One that cannot answer
  (no worker serves it, a worker that predates it) lets the call go, with a
  warning: a budget must not stop a run that would otherwise go on.
- A charge that fails is tried again with the same id (Temporal and the ledger
  dedupe it) for up to `CHARGE_PATIENCE`: a ledger with 10 updates in flight, or
  a worker restarting, refuses a charge for a moment. Only then is it a warning,
  never the call's failure: the reply has been paid for, and failing the call
  would only buy it again.

Prices are USD per million tokens, from the worker's model configuration; the
built-in offline model is free unless the configuration prices `offline`.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import WithStartWorkflowOperation, WorkflowQueryFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from stepflow.activities.model_endpoint import ModelEndpoint
from stepflow.workflows.budget import (
    BUDGET_CHARGE,
    BUDGET_LEDGER_WORKFLOW,
    BUDGET_QUERY,
    BudgetCharge,
    LedgerInput,
    is_spent,
    ledger_workflow_id,
    refusal_note,
    spend_text,
)
from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import (
    BudgetLedger,
    BudgetSpent,
    ModelCallInput,
    TokenUsage,
)

log = structlog.get_logger("stepflow.budget")

LEDGER_TIMEOUT = timedelta(seconds=10)
"""How long a ledger's query, or one try of a charge, may take."""

CHARGE_PATIENCE = timedelta(minutes=2)
"""How long a charge is tried again before it is given up with a warning (and never
past the call's own start-to-close timeout, less `CHARGE_MARGIN`)."""

CHARGE_MARGIN = timedelta(seconds=5)

CHARGE_BACKOFF = (0.05, 2.0)
"""First and longest pause between tries of a charge, in seconds (doubling, with jitter)."""

PER_MILLION = 1_000_000


def price_usage(call: ModelCallInput, endpoint: ModelEndpoint, usage: TokenUsage) -> TokenUsage:
    """`usage` with its `cost` from the endpoint's price (unchanged without a price).

    Cached prompt tokens cost the `cached_input` price where there is one.
    """
    price = endpoint.price
    if price is None:
        return usage
    cached = min(max(usage.cached_tokens, 0), usage.prompt_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    cost = (
        (usage.prompt_tokens - cached) * price.input
        + cached * cached_price
        + usage.completion_tokens * price.output
    ) / PER_MILLION
    return usage.model_copy(update={"cost": round(cost, 9)})


def require_price(call: ModelCallInput, endpoint: ModelEndpoint) -> None:
    """Raise `ModelUnpriced` (non-retryable) when a cost budget applies and the model has none."""
    cost_budget = call.cost_budget or any(b.budget.cost is not None for b in call.budgets)
    if not cost_budget or endpoint.price is not None:
        return
    name = endpoint.name
    raise ErrorType.MODEL_UNPRICED.error(
        f"model {name!r} has no price, and a `budget` with `cost` applies to step "
        f"{call.step_id!r}: give it one in the worker's STEPFLOW_MODELS, e.g. "
        f'{{"{name}": {{"price": {{"input": 2.5, "output": 10}}}}}} (USD per million tokens)'
    )


async def check_budgets(call: ModelCallInput) -> None:
    """Before the call: raise `BudgetExceeded` (non-retryable) if any ledger's budget is spent.

    The ledger that refused is told so (its result says a call was refused).
    """
    if not call.budgets:
        return
    started = time.monotonic()
    views = await asyncio.gather(*(_ask(ledger) for ledger in call.budgets))
    log.debug("budgets checked", ledgers=len(views), duration_ms=_since(started))
    for ledger, view in zip(call.budgets, views, strict=True):
        if view is None or not is_spent(ledger.budget, view.spent):
            continue
        refusal = BudgetCharge(refused=True)
        if not view.exceeded:  # the first refusal is news; later ones change nothing
            await _charge(ledger, f"{_charge_id(call)}/refused", refusal)
        raise ErrorType.BUDGET_EXCEEDED.error(
            f"run budget spent: {spend_text(ledger.budget, view.spent)} "
            f"{refusal_note(ledger.workflow_id)}; no new model call starts under it"
        )


async def _ask(ledger: BudgetLedger) -> BudgetSpent | None:
    """What the ledger has spent (nothing, if not started yet); None (and a warning) if it
    cannot say."""
    handle = activity.client().get_workflow_handle(ledger_workflow_id(ledger.workflow_id))
    try:
        return await handle.query(BUDGET_QUERY, result_type=BudgetSpent, rpc_timeout=LEDGER_TIMEOUT)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            return BudgetSpent(budget=ledger.budget)  # no charge yet: the first starts it
        _not_checked(ledger, err.message)
    except WorkflowQueryFailedError as err:
        _not_checked(ledger, str(err))
    return None


def _not_checked(ledger: BudgetLedger, error: str) -> None:
    log.warning(
        "budget not checked: its ledger did not answer; the call goes ahead",
        ledger=ledger_workflow_id(ledger.workflow_id),
        error=error,
    )


def _charge_id(call: ModelCallInput) -> str:
    """This attempt of the call: each attempt that got a reply was paid for, once."""
    info = activity.info()
    call_id = call.charge_id or f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"
    return f"{call_id}#{info.attempt}"


async def charge_budgets(call: ModelCallInput, usage: TokenUsage) -> None:
    """After the call: add `usage` to every ledger, once per attempt of `call.charge_id`.

    The update's id names the call and the attempt: a repeated request counts once,
    and each attempt that got a reply (and so was paid for) counts.
    """
    if not call.budgets:
        return
    charge_id = _charge_id(call)
    charge = BudgetCharge(usage=usage)
    started = time.monotonic()
    await asyncio.gather(*(_charge(ledger, charge_id, charge) for ledger in call.budgets))
    log.debug("budgets charged", ledgers=len(call.budgets), duration_ms=_since(started))


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


async def _charge(ledger: BudgetLedger, charge_id: str, charge: BudgetCharge) -> None:
    """Add `charge` to `ledger`, starting the ledger if this is its first; tried again with
    the same id until it is taken or `_charge_deadline` passes (then: a warning)."""
    client = activity.client()
    ledger_id = ledger_workflow_id(ledger.workflow_id)
    info = activity.info()
    deadline = _charge_deadline()
    pause, longest = CHARGE_BACKOFF
    tries = 0
    while True:
        tries += 1
        # A with-start operation serves one request: a new one each try.
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            BUDGET_LEDGER_WORKFLOW,
            LedgerInput(run_id=ledger.workflow_id, budget=ledger.budget),
            id=ledger_id,
            task_queue=ledger.task_queue or info.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"budget of run {ledger.workflow_id}",
        )
        try:
            await client.execute_update_with_start_workflow(
                BUDGET_CHARGE,
                charge,
                start_workflow_operation=start,
                id=charge_id,
                result_type=BudgetSpent,
                rpc_timeout=LEDGER_TIMEOUT,
            )
            if tries > 1:
                log.info("budget charged after retries", ledger=ledger_id, tries=tries)
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if time.monotonic() + pause >= deadline:
                # Never the call's failure: the reply is paid for.
                log.warning(
                    "budget not charged: its ledger did not take the charge",
                    ledger=ledger_id,
                    charge=charge_id,
                    tries=tries,
                    error=str(err) or type(err).__name__,
                )
                return
        activity.heartbeat()  # a long wait must not look like a lost worker
        await asyncio.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, longest)


def _charge_deadline() -> float:
    """`time.monotonic()` past which a charge is given up: `CHARGE_PATIENCE` from now, and
    before the call's start-to-close timeout (its retry would pay for the reply again)."""
    patience = CHARGE_PATIENCE.total_seconds()
    info = activity.info()
    if info.start_to_close_timeout:
        started = info.started_time
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        ends = started + info.start_to_close_timeout - CHARGE_MARGIN
        patience = min(patience, (ends - datetime.now(UTC)).total_seconds())
    return time.monotonic() + max(patience, 0.0)
