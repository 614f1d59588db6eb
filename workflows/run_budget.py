"""A pipeline run's side of its budget: the ledgers it hands its model calls, what its
records say it spent, the spend line of its details, and closing its ledger at its end.

The ledger itself is a workflow of its own (`workflows.budget`); this is what
`PipelineWorkflow` does with it, so that the run loop reads as a run loop.
"""

from __future__ import annotations

from temporalio import workflow

from stepflow.workflows.budget import (
    BUDGET_CLOSE,
    budget_line,
    ledger_workflow_id,
    spent_by_records,
)
from stepflow.workflows.models import BudgetLedger, BudgetSpent, PipelineSpec
from stepflow.workflows.run_state import RunState
from stepflow.workflows.run_view import total_usage


class RunBudget:
    """The budget of one run of a pipeline; every method is a no-op without `budget:`."""

    def __init__(self, spec: PipelineSpec, state: RunState) -> None:
        self.spec = spec
        self.state = state
        self._line: tuple[object, str] | None = None
        """The spend line, and the step counts it was made at (`spend_line`)."""

    def ledgers(self, parents: list[BudgetLedger]) -> list[BudgetLedger]:
        """The ledgers this run's model calls check and charge: its parents', then its own.

        Its own is a workflow of its own (`workflows.budget.BudgetLedgerWorkflow`), which
        the first charge starts on this run's task queue: workflow workers serve it.
        """
        ledgers = list(parents)
        if self.spec.budget is not None:
            info = workflow.info()
            ledgers.append(
                BudgetLedger(
                    workflow_id=info.workflow_id,
                    budget=self.spec.budget,
                    task_queue=info.task_queue,
                )
            )
        return ledgers

    def spent(self) -> BudgetSpent | None:
        """The spend as the records tell it: exact once every step has ended (the result);
        while steps run, their calls since their last report are missing (the client asks
        the ledger itself for the live spend)."""
        if self.spec.budget is None:
            return None
        records = self.state.records
        return spent_by_records(
            self.spec.budget, workflow.info().workflow_id, total_usage(records), records
        )

    def spend_line(self) -> str:
        """The details' spend line: what the steps' records say, made again only once a step
        changed status (summing every record at each publish would cost big runs dearly)."""
        key = tuple(sorted(self.state.counts.items()))
        if self._line is None or self._line[0] != key:
            spent = self.spent()
            self._line = (key, budget_line(spent) if spent is not None else "")
        return self._line[1]

    async def close(self) -> None:
        """At the run's end: its ledger closes (one never started, as nothing was charged:
        the signal fails, and nothing else does)."""
        if self.spec.budget is None:
            return
        ledger = workflow.get_external_workflow_handle(
            ledger_workflow_id(workflow.info().workflow_id)
        )
        try:
            await ledger.signal(BUDGET_CLOSE)
        except Exception:
            workflow.logger.debug("budget ledger not closed: it was never started")
