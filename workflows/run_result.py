"""What a pipeline run starts with from a rerun, and what it ends with: its `PipelineResult`.

Pure functions of the run's input and state, called by `PipelineWorkflow`.
"""

from __future__ import annotations

from datetime import datetime

from stepflow.workflows.models import (
    WITH_OUTPUT,
    BudgetSpent,
    PipelineInput,
    PipelineResult,
    PipelineSpec,
    PipelineStatus,
    StepRecord,
    StepStatus,
)
from stepflow.workflows.run_state import RunState
from stepflow.workflows.run_view import total_usage, usage_by_model
from stepflow.workflows.steps.base import StepContext
from stepflow.workflows.templates import Scope, TemplateError, render


def reused(input: PipelineInput) -> list[StepRecord]:
    """A rerun's first run: the records of the steps it takes over, marked REUSED."""
    if input.reuse is None or input.carried is not None:
        return []
    return [
        StepRecord(
            id=r.id,
            kind=r.kind,
            status=StepStatus.REUSED,
            output=r.output,
            model=r.model,
            reused_from=r.reused_from or input.reuse.source,
        )
        for r in input.reuse.records
    ]


def run_result(
    spec: PipelineSpec,
    state: RunState,
    ctx: StepContext,
    failed: StepRecord | None,
    rerun_of: str | None,
    now: datetime,
    budget: BudgetSpent | None = None,
) -> PipelineResult:
    """The run's result: every record, the error of the step that failed it, its `outputs`,
    tokens and cost per model, and (a run with a `budget`) what it spent against it."""
    error = f"step {failed.id!r} failed: {failed.error}" if failed is not None else None
    outputs = None
    if spec.outputs is not None and error is None:
        try:
            outputs = _outputs(spec, state, ctx)
        except TemplateError as err:
            error = f"outputs: {err}"
    return PipelineResult(
        pipeline=spec.name,
        usage=total_usage(state.records),
        status=PipelineStatus.FAILED if error else PipelineStatus.SUCCEEDED,
        steps=list(state.records),
        error=error,
        started_at=state.started_at,
        ended_at=now,
        outputs=outputs,
        rerun_of=rerun_of,
        usage_by_model=usage_by_model(state.records),
        budget=budget,
    )


def _outputs(spec: PipelineSpec, state: RunState, ctx: StepContext) -> dict[str, object]:
    """The pipeline's declared `outputs`, over every step (one that did not succeed: null)."""
    records = state.records
    nulls = frozenset(r.id for r in records if r.status not in WITH_OUTPUT)
    rendered = render(
        spec.outputs,
        ctx.inputs,
        {r.id: r.output for r in records},
        Scope({"loop": ctx.loop} if ctx.loop is not None else {}, nulls),
    )
    return dict(rendered)
