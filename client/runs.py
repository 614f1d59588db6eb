"""Runs as Temporal itself sees them (no worker needed): the search attributes Stepflow
starts runs with, `RunSummary` records, and the visibility query behind `stepflow list`.

`StepflowStatus` is only as fresh as the workflow's last word: a terminated or
timed-out run never got to say it ended. A closed run's status therefore comes
from Temporal's execution status, a running one's from the attribute.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import structlog
from temporalio.client import WorkflowExecution, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from stepflow.workflows import control
from stepflow.workflows.control import RunStatus
from stepflow.workflows.models import PIPELINE_NAME_PATTERN
from stepflow.workflows.pipeline import PIPELINE_WORKFLOW

log = structlog.get_logger("stepflow.client")

TERMINATED, TIMED_OUT = "TERMINATED", "TIMED_OUT"
"""Run statuses only Temporal knows: the workflow never got to say how it ended."""

_CLOSED_STATUS = {
    WorkflowExecutionStatus.COMPLETED: RunStatus.SUCCEEDED.value,
    WorkflowExecutionStatus.FAILED: RunStatus.FAILED.value,
    WorkflowExecutionStatus.CANCELED: RunStatus.CANCELLED.value,
    WorkflowExecutionStatus.TERMINATED: TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT: TIMED_OUT,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "CONTINUED_AS_NEW",
}
_VISIBILITY_STATUS = {
    RunStatus.SUCCEEDED.value: "Completed",
    RunStatus.FAILED.value: "Failed",
    RunStatus.CANCELLED.value: "Canceled",
    TERMINATED: "Terminated",
    TIMED_OUT: "TimedOut",
}
_PIPELINE_NAME = re.compile(PIPELINE_NAME_PATTERN)
LIST_STATUSES = [s.value for s in RunStatus] + [TERMINATED, TIMED_OUT]
"""What `list_runs(status=...)` accepts."""


@dataclass(frozen=True)
class RunSummary:
    """One run as visibility (or `describe`) sees it: no worker needed to answer."""

    workflow_id: str
    run_id: str
    pipeline: str | None
    status: str = ""
    """Where the run is: `StepflowStatus` while it runs; once closed, how Temporal closed it
    (so a terminated run says TERMINATED, not the RUNNING it last reported)."""
    stepflow_status: str | None = None
    """The `StepflowStatus` search attribute as the workflow last set it (None: not set)."""
    execution_status: str = ""
    """Temporal's own status: RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, TIMED_OUT."""
    start_time: datetime | None = None
    close_time: datetime | None = None
    rerun_of: str | None = None
    """A rerun: the workflow id of the run it reran."""

    @property
    def closed(self) -> bool:
        return self.execution_status != WorkflowExecutionStatus.RUNNING.name

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("start_time", "close_time"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


async def run_summary(execution: WorkflowExecution) -> RunSummary:
    """A `RunSummary` from a listed or described execution.

    A run that continued as new is one run to its user: its start time is the
    chain's (the memo's `started_at`, which every run of the chain carries).
    """
    attributes = execution.typed_search_attributes
    stepflow_status = attributes.get(control.STATUS_ATTRIBUTE)
    pipeline = attributes.get(control.PIPELINE_ATTRIBUTE)
    try:
        memo = await execution.memo()
    except Exception:  # encrypted with a key this process lacks: list the run all the same
        memo = {}
    if pipeline is None:  # started without search attributes: the memo has it
        pipeline = memo.get("pipeline") if isinstance(memo.get("pipeline"), str) else None
    execution_status = execution.status or WorkflowExecutionStatus.RUNNING
    if execution_status is WorkflowExecutionStatus.RUNNING:
        status = stepflow_status or RunStatus.RUNNING.value
    else:
        status = _CLOSED_STATUS[execution_status]
    return RunSummary(
        workflow_id=execution.id,
        run_id=execution.run_id,
        pipeline=pipeline,
        status=status,
        stepflow_status=stepflow_status,
        execution_status=execution_status.name,
        start_time=_chain_start(memo) or execution.start_time,
        close_time=execution.close_time,
        rerun_of=memo.get("rerun_of") if isinstance(memo.get("rerun_of"), str) else None,
    )


def chain_memo(started_at: datetime) -> dict[str, Any]:
    """What the client adds to a run's memo so listings show its chain's start."""
    return {"started_at": started_at.isoformat()}


def _chain_start(memo: Mapping[str, Any]) -> datetime | None:
    value = memo.get("started_at")
    if not isinstance(value, str):
        return None  # started by an older client, a schedule or the temporal CLI
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def stepflow_attributes(pipeline: str, rerun_of: str | None = None) -> TypedSearchAttributes:
    """The search attributes a run starts with; the workflow keeps `StepflowStatus` current."""
    pairs: list[SearchAttributePair[str]] = [
        SearchAttributePair(control.PIPELINE_ATTRIBUTE, pipeline),
        SearchAttributePair(control.STATUS_ATTRIBUTE, RunStatus.RUNNING.value),
    ]
    if rerun_of is not None:
        pairs.append(SearchAttributePair(control.RERUN_ATTRIBUTE, rerun_of))
    return TypedSearchAttributes(pairs)


def reruns_query(workflow_id: str) -> str:
    """The visibility query for the reruns of a run."""
    quoted = workflow_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"{control.RERUN_ATTRIBUTE.name} = '{quoted}' AND ExecutionStatus != 'ContinuedAsNew'"


def attributes_unregistered(err: RPCError) -> bool:
    """The namespace lacks Stepflow's search attributes (a server we did not start)."""
    names = (
        control.PIPELINE_ATTRIBUTE.name,
        control.STATUS_ATTRIBUTE.name,
        control.RERUN_ATTRIBUTE.name,
    )
    return err.status == RPCStatusCode.INVALID_ARGUMENT and any(n in err.message for n in names)


_warned_unregistered = False


def warn_unregistered(err: RPCError) -> None:
    """Say once per process that runs start without search attributes, and how to fix it."""
    global _warned_unregistered
    if not _warned_unregistered:
        _warned_unregistered = True
        log.warning(
            "search_attributes_unregistered",
            detail=err.message,
            hint="runs start without StepflowPipeline/StepflowStatus, so `stepflow list` cannot "
            "filter them; register both: temporal operator search-attribute create "
            "--name StepflowPipeline --type Keyword (and StepflowStatus, StepflowRerunOf)",
        )


def list_query(status: str | None = None, pipeline: str | None = None) -> str:
    """The visibility query for pipeline runs, by run status and pipeline name.

    Raises:
        ValueError: an unknown status or a malformed pipeline name.
    """
    # A long run that continued as new is one pipeline run: list its current run only. Loop
    # iterations, sub-pipelines and for_each batches are child runs: `status` shows them.
    query = (
        f"WorkflowType = '{PIPELINE_WORKFLOW}' AND ExecutionStatus != 'ContinuedAsNew' "
        "AND ParentWorkflowId IS NULL"
    )
    if status is not None:
        status = status.upper()
        if status not in LIST_STATUSES:
            raise ValueError(f"unknown status {status!r}: use one of {', '.join(LIST_STATUSES)}")
        if status in _VISIBILITY_STATUS:  # closed runs: Temporal's own status is the truth
            query += f" AND ExecutionStatus = '{_VISIBILITY_STATUS[status]}'"
        else:
            attribute = control.STATUS_ATTRIBUTE.name
            condition = f"{attribute} = '{status}'"
            if status == RunStatus.RUNNING.value:  # runs started without the attributes, too
                condition = f"({condition} OR {attribute} IS NULL)"
            query += f" AND ExecutionStatus = 'Running' AND {condition}"
    if pipeline is not None:
        if not _PIPELINE_NAME.fullmatch(pipeline):
            raise ValueError(f"{pipeline!r} is not a pipeline name")
        query += f" AND {control.PIPELINE_ATTRIBUTE.name} = '{pipeline}'"
    return query
