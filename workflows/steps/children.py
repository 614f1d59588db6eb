"""Child pipeline runs: what loops, sub-pipelines and large for_each steps are made of.

A loop iteration, a sub-pipeline and a batch of a large for_each each run as a
child `PipelineWorkflow` with a history of its own, so history, replay, crash
recovery, run control and the Web UI work for them as for any run, and no run
in the chain outgrows Temporal's history limits.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, CancelledError, ChildWorkflowError

from stepflow.workflows.errors import ErrorType, StepFailure, child_failure
from stepflow.workflows.models import (
    WITH_OUTPUT,
    PipelineInput,
    PipelineResult,
    PipelineSpec,
    Reuse,
    RunScope,
    StepRecord,
    StepStatus,
    TokenUsage,
    UsageByModel,
    add_by_model,
)
from stepflow.workflows.steps.base import StepContext

PIPELINE_WORKFLOW = "stepflow_pipeline"
"""The pipeline workflow's type name (`pipeline.PIPELINE_WORKFLOW`, which imports this package)."""


def child_id(*parts: str) -> str:
    """`<this run's workflow id>/<part>/...`: a child's id names where it sits in its parent."""
    return "/".join((workflow.info().workflow_id, *parts))


async def run_child(
    ctx: StepContext,
    record: StepRecord,
    spec: PipelineSpec,
    inputs: dict[str, Any],
    workflow_id: str,
    summary: str,
    scope: RunScope | None = None,
    reuse: Reuse | None = None,
) -> PipelineResult:
    """Run `spec` as a child pipeline and return its result; a failed child fails the step.

    The child's tokens and cost are added to `record`'s usage (and per model) whichever
    way it ends. The child checks and charges the budgets of this run and those above
    it (`ctx.budgets`), and keeps a ledger of its own if its spec has a `budget`.
    """
    record.child = workflow_id
    ctx.publish()
    try:
        result = await workflow.execute_child_workflow(
            PIPELINE_WORKFLOW,
            PipelineInput(
                spec=spec,
                inputs=inputs,
                routing=ctx.routing,
                payload_store=ctx.payload_store,
                scope=scope,
                reuse=reuse,
                no_cache=ctx.no_cache,
                budgets=ctx.budgets,
            ),
            result_type=PipelineResult,
            id=workflow_id,
            static_summary=summary,
        )
    except ChildWorkflowError as err:
        if isinstance(err.cause, CancelledError) and ctx.cancelling():
            raise asyncio.CancelledError(str(err.cause)) from None
        raise pipeline_failure(err, record) from None
    add_usage(record, result.usage, result.usage_by_model)
    return result


def pipeline_failure(err: ChildWorkflowError, record: StepRecord) -> StepFailure:
    """A failed child pipeline as the failure of the step that ran it.

    A child that failed at a step says which and why (its `PipelineResult` rides in
    the error's details); its tokens still count.
    """
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == ErrorType.PIPELINE_FAILED:
        details = cause.details[0] if cause.details else None
        if isinstance(details, dict):
            result = PipelineResult.model_validate(details)
            add_usage(record, result.usage, result.usage_by_model)
            failed = first_failure(result)
            if failed is not None:
                return StepFailure(
                    failed.error_type or ErrorType.PIPELINE_FAILED,
                    f"{failed.id}: {failed.error}",
                    attempts=0,
                )
        return StepFailure(ErrorType.PIPELINE_FAILED, cause.message, attempts=0)
    failure = child_failure(err)
    failure.agent = {}  # not an agent's details
    return failure


def first_failure(result: PipelineResult) -> StepRecord | None:
    """The record that failed the run: the first that failed, timed out or was cancelled."""
    for record in result.steps:
        if record.status in (StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED):
            return record
    return None


def add_usage(record: StepRecord, usage: TokenUsage, by_model: UsageByModel | None = None) -> None:
    """A child run's (or an instance's) tokens and cost count for the step that ran it."""
    if usage.model_calls or usage.total_tokens or usage.cost:
        record.usage = (record.usage or TokenUsage()).plus(usage)
    if by_model:
        record.usage_by_model = add_by_model(record.usage_by_model or {}, by_model)


def outputs_of(result: PipelineResult, spec: PipelineSpec) -> Any:
    """What a child pipeline gives its step: its declared `outputs`, else its steps' by id."""
    if spec.outputs is not None:
        return result.outputs
    return {r.id: r.output for r in result.steps if r.status in WITH_OUTPUT}


def scope_for(ctx: StepContext, depends_on: list[str], **fields: Any) -> RunScope:
    """What a child run sees of this one: the outputs of `depends_on`, wherever they live."""
    records = ctx.state.by_id
    outputs: dict[str, Any] = {}
    skipped: list[str] = []
    for dep in depends_on:
        if dep in records:
            outputs[dep] = records[dep].output
            if records[dep].status not in WITH_OUTPUT:
                skipped.append(dep)
        else:
            outputs[dep] = ctx.outside.get(dep)
            if dep in ctx.outside_skipped:
                skipped.append(dep)
    return RunScope(outputs=outputs, skipped=skipped, **fields)
