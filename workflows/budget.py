"""Run budgets: the ledger workflow that keeps a budgeted run's spend, and how spend reads.

A run whose spec has `budget: {tokens: ..., cost: ...}` has a ledger of what the
model calls under it spent: its own agent and plan steps' and those of every
child run (loop iterations, for_each batches, sub-pipelines, plans), which are
handed the ledger (`PipelineInput.budgets`). The ledger is a small workflow of
its own, `BudgetLedgerWorkflow` (id `<run's workflow id>.budget`), not the
pipeline run: a run's model calls may number in the thousands, and Temporal
takes at most 2,000 updates in one run of a workflow (10 at a time) and warns
past 10,240 events. The ledger continues as new whenever the server suggests
it, carrying its few fields, so neither limit is ever reached, and the
pipeline's history holds nothing of the charges.

Each model call, on the worker (`activities.budget`):

- before it starts, asks every ledger above it (query `stepflow_budget`) and is
  refused, `BudgetExceeded`, if one is spent (a ledger not started yet has
  spent nothing);
- after its reply, charges what it cost to every ledger (update
  `stepflow_budget_charge` with start: the first charge starts the ledger; the
  update id is the charge id, so a repeated request counts once: Temporal
  dedupes within one run, the ledger's own list of recent ids across runs).

The pipeline signals its ledger to close (`stepflow_budget_close`) when it
ends; a ledger whose run never said so (a terminated run) closes itself after
`LEDGER_IDLE` without a charge. The pipeline never reads the ledger: its
result's `budget` is the sum of its steps' usage (`spent_by_records`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from temporalio import workflow

from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import BudgetSpec, BudgetSpent, StepRecord, TokenUsage
from stepflow.workflows.run_state import LedgerState

BUDGET_LEDGER_WORKFLOW = "stepflow_budget_ledger"
"""The workflow type of a budgeted run's ledger (`BudgetLedgerWorkflow`)."""

BUDGET_QUERY = "stepflow_budget"
"""Query of a ledger: its `BudgetSpent`."""

BUDGET_CHARGE = "stepflow_budget_charge"
"""Update of a ledger: add one model call's cost (`BudgetCharge`)."""

BUDGET_CLOSE = "stepflow_budget_close"
"""Signal from the budgeted run to its ledger, at the run's end: the ledger closes."""

LEDGER_SUFFIX = ".budget"
"""A ledger's workflow id is its run's plus this (`research-3f2a9c1d.budget`).

Not `/budget`: an agent step's workflow id is `<run's id>/<step id>`, and `budget` is a
valid step id. A step id holds no `.`, and the 7 bytes fit the room the workflow-id
length check (`client.loading.limit_issues`) leaves for any step nested in the run."""

LEDGER_IDLE = timedelta(days=7)
"""A ledger that has taken no charge for this long closes by itself (its run ended unheard)."""

RECENT_CHARGES = 256
"""Charge ids a ledger keeps for its own dedupe (Temporal's covers one run of the chain)."""


def ledger_workflow_id(run_id: str) -> str:
    """The workflow id of the ledger of the budgeted run `run_id` (its chain's workflow id)."""
    return f"{run_id}{LEDGER_SUFFIX}"


class BudgetCharge(BaseModel):
    """Payload of `stepflow_budget_charge`: what one model call cost, or that one was refused."""

    usage: TokenUsage = Field(default_factory=TokenUsage)
    refused: bool = Field(
        default=False, description="A model call was refused because this budget is spent."
    )


def is_spent(budget: BudgetSpec, spent: TokenUsage) -> bool:
    """Whether no new model call may start: the tokens or the cost have reached the budget."""
    if budget.tokens is not None and spent.total_tokens >= budget.tokens:
        return True
    return budget.cost is not None and spent.cost >= budget.cost


def money(value: float) -> str:
    """US dollars as people read them: `$2.50`, `$0.42`, `$0.0031`."""
    if value == 0 or abs(value) >= 0.1:
        return f"${value:,.2f}"
    return f"${value:.2g}"


def spend_text(budget: BudgetSpec, spent: TokenUsage) -> str:
    """`$0.42 of $2.50 · 12,345 of 200,000 tokens`: what was spent, against what budget."""
    parts = []
    if budget.cost is not None:
        parts.append(f"{money(spent.cost)} of {money(budget.cost)}")
    elif spent.cost:
        parts.append(money(spent.cost))
    tokens = f"{spent.total_tokens:,}"
    if budget.tokens is not None:
        tokens += f" of {budget.tokens:,}"
    parts.append(f"{tokens} tokens")
    return " · ".join(parts)


def budget_line(view: BudgetSpent) -> str:
    """`budget: $0.42 of $2.50 · 12,345 of 200,000 tokens` (`, spent: calls refused` once so)."""
    line = f"budget: {spend_text(view.budget, view.spent)}"
    if view.exceeded:
        line += " · spent: model calls refused"
    return line


def refusal_note(run_id: str) -> str:
    """How a refused call's message names the budget that refused it (`activities.budget`)."""
    return f"(the budget of run {run_id})"


def refused_in(records: Iterable[StepRecord], run_id: str) -> bool:
    """Whether a step of the run failed because the budget of run `run_id` was spent.

    A step's own record, or (a for_each whose failed instances were let go) one of its
    instances' places in the output. A refusal inside a child run whose step let it go
    (`on_failure: continue` in a sub-pipeline) leaves no trace up here.
    """
    note = refusal_note(run_id)
    refused = str(ErrorType.BUDGET_EXCEEDED)
    for record in records:
        if record.error_type == refused and note in (record.error or ""):
            return True
        if record.items is not None and isinstance(record.output, list):
            for item in record.output:
                if (
                    isinstance(item, dict)
                    and item.get("error_type") == refused
                    and note in str(item.get("error") or "")
                ):
                    return True
    return False


class BudgetBook:
    """A ledger's budget and its `LedgerState`: the charges it took, once each."""

    def __init__(self, budget: BudgetSpec, state: LedgerState) -> None:
        self.budget = budget
        self.state = state

    def view(self) -> BudgetSpent:
        """What the query answers: the budget, the spend, whether a call was refused."""
        return BudgetSpent(budget=self.budget, spent=self.state.spent, exceeded=self.state.refused)

    def charge(self, charge_id: str | None, charge: BudgetCharge) -> bool:
        """Add `charge`, unless a charge of `charge_id` was taken already; True if it counted."""
        state = self.state
        if charge_id is not None:
            if charge_id in state.charges:
                return False
            state.charges.append(charge_id)
            del state.charges[:-RECENT_CHARGES]
        if charge.usage.model_calls or charge.usage.total_tokens or charge.usage.cost:
            state.spent = state.spent.plus(charge.usage)
        if charge.refused:
            state.refused = True
        return True


class LedgerInput(BaseModel):
    """What `BudgetLedgerWorkflow` starts with: the first charge's, or its previous run's."""

    run_id: str = Field(description="The workflow id of the budgeted pipeline run.")
    budget: BudgetSpec
    state: LedgerState = Field(default_factory=LedgerState)
    last_charge: datetime | None = Field(
        default=None, description="Carried over: when the ledger last took a charge."
    )


@workflow.defn(name=BUDGET_LEDGER_WORKFLOW)
class BudgetLedgerWorkflow:
    """The ledger of one budgeted pipeline run. Input `LedgerInput`, result `BudgetSpent`.

    Answers `stepflow_budget` and `stepflow_budget_charge`; continues as new when the
    server suggests it (its history grows by about 5 events a charge), and ends on
    `stepflow_budget_close` or after `LEDGER_IDLE` without a charge.
    """

    @workflow.init
    def __init__(self, input: LedgerInput) -> None:
        self.book = BudgetBook(input.budget, input.state)
        self.closed = False
        self.last_charge = input.last_charge or workflow.now()

    @workflow.run
    async def run(self, input: LedgerInput) -> BudgetSpent:
        workflow.set_current_details(f"budget of run {input.run_id}")
        while not self.closed:
            idle = self.last_charge + LEDGER_IDLE - workflow.now()
            if idle <= timedelta(0):
                workflow.logger.info("budget ledger idle for %s: closing", LEDGER_IDLE)
                break
            try:
                # One timer a week, not one per charge: a charge only moves `last_charge`.
                await workflow.wait_condition(
                    lambda: self.closed or workflow.info().is_continue_as_new_suggested(),
                    timeout=idle,
                    timeout_summary="close when idle",
                )
            except TimeoutError:
                continue
            if not self.closed:
                # Every charge taken is in the state handed over; none is half-done.
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    LedgerInput(
                        run_id=input.run_id,
                        budget=input.budget,
                        state=self.book.state,
                        last_charge=self.last_charge,
                    )
                )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.book.view()

    @workflow.query(name=BUDGET_QUERY)
    def spent(self) -> BudgetSpent:
        return self.book.view()

    @workflow.update(name=BUDGET_CHARGE)
    def charge(self, charge: BudgetCharge) -> BudgetSpent:
        info = workflow.current_update_info()
        if self.book.charge(info.id if info else None, charge):
            self.last_charge = workflow.now()
        return self.book.view()

    @workflow.signal(name=BUDGET_CLOSE)
    def close(self) -> None:
        self.closed = True


def spent_by_records(
    budget: BudgetSpec, run_id: str, usage: TokenUsage, records: Iterable[StepRecord]
) -> BudgetSpent:
    """A run's spend as its records tell it: every step's usage (`usage`), and whether a step
    was refused for this run's budget. At the run's end, when every step has ended, this is
    what the ledger took (unless a charge was lost: the worker logged a warning then)."""
    return BudgetSpent(budget=budget, spent=usage, exceeded=refused_in(records, run_id))
