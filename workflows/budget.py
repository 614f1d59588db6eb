"""Run budgets: the ledger a pipeline run with a `budget` keeps, and how spend reads.

A run whose spec has `budget: {tokens: ..., cost: ...}` keeps a ledger of what
the model calls under it spent: its own agent and plan steps' and those of every
child run (loop iterations, for_each batches, sub-pipelines, plans), which are
handed the ledger (`PipelineInput.budgets`). Each model call, on the worker
(`activities.budget`):

- before it starts, asks every ledger above it (query `stepflow_budget`) and is
  refused, `BudgetExceeded`, if one is spent;
- after its reply, charges what it cost to every ledger (update
  `stepflow_budget_charge`, whose update id is the charge id: Temporal counts a
  repeated request once, and the ledger keeps the latest ids to do the same
  across continue-as-new).

Checked before and charged after, a run overshoots its budget by at most the
calls that were already under way when it ran out: one per agent step running
at that moment. A run without a budget pays nothing for any of this.

Pure except `BudgetBook.register`, which installs the handlers in the running
workflow; the spend texts are shared by the workflow, the worker and the client.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field
from temporalio import workflow

from stepflow.workflows.models import BudgetSpec, BudgetSpent, TokenUsage
from stepflow.workflows.run_state import LedgerState

BUDGET_QUERY = "stepflow_budget"
"""Query of a run with a budget: its `BudgetSpent`."""

BUDGET_CHARGE = "stepflow_budget_charge"
"""Update of a run with a budget: add one model call's cost (`BudgetCharge`)."""

RECENT_CHARGES = 256
"""Charge ids a ledger keeps for its own dedupe (Temporal's covers one run of the chain)."""


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


class BudgetBook:
    """The ledger of one pipeline run: its budget and its `LedgerState` (part of `RunState`)."""

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

    def register(self, changed: Callable[[], None]) -> None:
        """Install the query and the update in the running workflow (from `@workflow.init`).

        `changed` is called after a charge counted: the run refreshes its details, and
        notes that this workflow task accepted an update.
        """

        def query() -> BudgetSpent:
            return self.view()

        def update(charge: BudgetCharge) -> BudgetSpent:
            info = workflow.current_update_info()
            if self.charge(info.id if info else None, charge):
                changed()
            return self.view()

        # The SDK reads the payload's type from the annotations.
        update.__annotations__ = {"charge": BudgetCharge, "return": BudgetSpent}
        workflow.set_query_handler(BUDGET_QUERY, query)
        workflow.set_update_handler(BUDGET_CHARGE, update)
