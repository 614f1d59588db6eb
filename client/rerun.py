"""Rerun a run from a step: everything before it comes from the run it reruns, the rest runs.

`plan_rerun` reads the earlier run (its spec and inputs from its start event, its
steps' records from its result, or from the `status` query when it ended without
one) and works out which steps the new run takes over (`REUSED`) and which run
again: the step asked for, or every failed one (`--from-failed`), everything
downstream of them, and any step whose output the earlier run does not hold (it
failed, was skipped, never ran, or its output is too large for the query). A
step inside a loop or a sub-pipeline (`revise.write`) reruns the loop from the
iteration that step was in, or the sub-pipeline from that step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from stepflow.workflows.control import STATUS_QUERY, PipelineState
from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import (
    WITH_OUTPUT,
    LoopStep,
    NestedReuse,
    PipelineInput,
    PipelineResult,
    PipelineSpec,
    PipelineStep,
    Reuse,
    Step,
    StepRecord,
    StepStatus,
)
from stepflow.workflows.steps.subpipeline import child_spec

FAILED = (StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED)


class RerunRefused(ValueError):
    """The rerun cannot be made as asked: the message says why."""


@dataclass
class RerunPlan:
    """What the new run starts with."""

    spec: PipelineSpec
    inputs: dict[str, Any]
    reuse: Reuse
    rerun: list[str]
    """Top-level steps that run again, in spec order."""


async def read_run(temporal: Client, workflow_id: str) -> tuple[PipelineInput, list[StepRecord]]:
    """An ended run's input (its latest run's) and its steps' records."""
    handle = temporal.get_workflow_handle(workflow_id)
    try:
        described = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise RerunRefused(f"no run with id {workflow_id!r}") from None
        raise
    if described.status is WorkflowExecutionStatus.RUNNING:
        raise RerunRefused(
            f"run {workflow_id!r} is still running: wait for it, or cancel it first "
            f"(stepflow cancel {workflow_id})"
        )
    return await read_input(temporal, workflow_id), await _records(
        temporal, workflow_id, described.status
    )


async def read_input(temporal: Client, workflow_id: str) -> PipelineInput:
    """What a run (its latest run, for a chain) started with: spec, inputs, routing."""
    handle = temporal.get_workflow_handle(workflow_id)
    try:
        history = await handle.fetch_history()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise RerunRefused(f"no run with id {workflow_id!r}") from None
        raise
    started = history.events[0]
    assert started.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    payloads = started.workflow_execution_started_event_attributes.input.payloads
    [input] = await temporal.data_converter.decode(payloads, [PipelineInput])
    if not isinstance(input, PipelineInput):
        raise RerunRefused(f"run {workflow_id!r} is not a pipeline run")
    return input


async def _records(
    temporal: Client, workflow_id: str, status: WorkflowExecutionStatus | None
) -> list[StepRecord]:
    handle = temporal.get_workflow_handle(workflow_id)
    if status is WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        return PipelineResult.model_validate(result).steps
    if status is WorkflowExecutionStatus.FAILED:
        try:
            await handle.result()
        except WorkflowFailureError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == ErrorType.PIPELINE_FAILED:
                return PipelineResult.model_validate(cause.details[0]).steps
            raise RerunRefused(f"run {workflow_id!r} failed before any step ran: {cause}") from None
    # Cancelled, terminated, timed out: no result, but the run still answers the query
    # (a worker replays it). Outputs too large for it are summarised: those steps rerun.
    state = await handle.query(STATUS_QUERY, result_type=PipelineState)
    return state.steps


def _has_output(record: StepRecord | None) -> bool:
    if record is None or record.status not in WITH_OUTPUT:
        return False
    return not (isinstance(record.output, dict) and "$summary" in record.output)


def _downstream(steps: list[Step], start: set[str]) -> set[str]:
    """`start` and every step that depends on one of them, transitively."""
    dependents: dict[str, list[str]] = {s.id: [] for s in steps}
    for s in steps:
        for dep in s.depends_on:
            dependents.setdefault(dep, []).append(s.id)
    seen = set(start)
    todo = list(start)
    while todo:
        for dependent in dependents.get(todo.pop(), []):
            if dependent not in seen:
                seen.add(dependent)
                todo.append(dependent)
    return seen


def failed_steps(records: list[StepRecord]) -> list[str]:
    """Steps that failed, timed out or were cancelled (not those skipped because of them)."""
    return [r.id for r in records if r.status in FAILED]


def reuse_for(
    steps: list[Step],
    old_steps: list[Step] | None,
    records: list[StepRecord],
    source: str,
    start: set[str],
) -> tuple[Reuse, list[str]]:
    """Which of `steps` are taken over from `records`, given that `start` runs again.

    Raises:
        RerunRefused: a step to take over was changed since the earlier run.
    """
    by_id = {r.id: r for r in records}
    old = {s.id: s for s in old_steps} if old_steps is not None else {}
    missing = {s.id for s in steps if not _has_output(by_id.get(s.id))}
    rerun = _downstream(steps, start | missing)
    for s in steps:
        if s.id in rerun or s.id not in old:
            continue
        if old[s.id].model_dump() != s.model_dump():
            raise RerunRefused(
                f"step {s.id!r} changed since run {source!r}, so its output there no longer "
                f"stands: rerun from it (--from {s.id}) or from a step before it"
            )
    reused = [
        by_id[s.id].model_copy(update={"reused_from": by_id[s.id].reused_from or source})
        for s in steps
        if s.id not in rerun
    ]
    return Reuse(source=source, records=reused), [s.id for s in steps if s.id in rerun]


async def plan_rerun(
    temporal: Client,
    workflow_id: str,
    from_step: str | None,
    *,
    from_failed: bool = False,
    spec: PipelineSpec | None = None,
    inputs: dict[str, Any] | None = None,
) -> RerunPlan:
    """The new run of a rerun of `workflow_id` from `from_step` (or from its failed steps).

    Args:
        spec: The pipeline to run (`--file`); None: the earlier run's own.
        inputs: Inputs to change; the others are the earlier run's.

    Raises:
        RerunRefused: no such run or step, still running, nothing failed, a reused step changed.
    """
    old_input, records = await read_run(temporal, workflow_id)
    new_spec = spec or old_input.spec
    merged = {**old_input.inputs, **(inputs or {})}
    if from_failed:
        failed = failed_steps(records)
        if not failed:
            raise RerunRefused(f"run {workflow_id!r} has no failed step: use --from STEP")
        start = {s for s in failed if any(step.id == s for step in new_spec.steps)}
        reuse, rerun = reuse_for(new_spec.steps, old_input.spec.steps, records, workflow_id, start)
        # A loop or sub-pipeline that failed at a step inside reruns from that step.
        for record in records:
            step = next((s for s in new_spec.steps if s.id == record.id), None)
            if record.id in start and record.child and isinstance(step, LoopStep | PipelineStep):
                _, child_records = await read_run(temporal, record.child)
                inner = set(failed_steps(child_records))
                if inner:
                    reuse.inside[record.id] = await _inside(temporal, step, record, inner, new_spec)
        return RerunPlan(new_spec, merged, reuse, rerun)
    if not from_step:
        raise RerunRefused("say which step to rerun from (--from STEP), or --from-failed")
    head, _, nested = from_step.partition(".")
    ids = [s.id for s in new_spec.steps]
    if head not in ids:
        raise RerunRefused(f"pipeline {new_spec.name!r} has no step {head!r}")
    reuse, rerun = reuse_for(new_spec.steps, old_input.spec.steps, records, workflow_id, {head})
    if nested:
        step = new_spec.step(head)
        old_record = next((r for r in records if r.id == head), None)
        if "." in nested:
            raise RerunRefused("a rerun goes at most one level into a loop or sub-pipeline")
        reuse.inside[head] = await _inside(temporal, step, old_record, {nested}, new_spec)
    return RerunPlan(new_spec, merged, reuse, rerun)


async def _inside(
    temporal: Client,
    step: Step,
    record: StepRecord | None,
    inner: set[str],
    parent: PipelineSpec,
) -> NestedReuse:
    """A rerun from `inner`, steps inside the loop or sub-pipeline `step`."""
    if not isinstance(step, LoopStep | PipelineStep):
        raise RerunRefused(f"step {step.id!r} is a {step.kind} step: it has no steps inside")
    if record is None or record.child is None:
        raise RerunRefused(f"step {step.id!r} never started a child run to rerun from")
    child_input, child_records = await read_run(temporal, record.child)
    body = step.steps if isinstance(step, LoopStep) else (child_spec(parent, step) or parent).steps
    for name in sorted(inner - {s.id for s in body}):
        raise RerunRefused(f"step {step.id!r} has no step {name!r} inside")
    reuse, _ = reuse_for(body, child_input.spec.steps, child_records, record.child, inner)
    if isinstance(step, PipelineStep):
        return NestedReuse(reuse=reuse)
    iteration = record.iteration or 1
    previous = None
    if iteration > 1:
        prior = record.child.rsplit("/", 1)[0] + f"/{iteration - 1}"
        _, prior_records = await read_run(temporal, prior)
        previous = {
            r.id: {
                "output": r.output,
                "status": "SUCCEEDED" if r.status in WITH_OUTPUT else r.status,
            }
            for r in prior_records
        }
    return NestedReuse(iteration=iteration, previous=previous, reuse=reuse)
