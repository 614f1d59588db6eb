"""How a running pipeline describes itself: its run status and the Web UI's current details.

Pure functions of the step records; the workflow calls them whenever a record
changes. Imported in the workflow sandbox: no I/O, no clocks (times come in).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic_core import to_json

from stepflow.workflows.control import RunStatus
from stepflow.workflows.models import StepRecord, StepStatus, TokenUsage
from stepflow.workflows.plan_rows import plan_rows
from stepflow.workflows.records import QUIET, UsageByModel, add_by_model

ACTIVE = (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING)
"""A step in one of these has not ended yet."""

DETAILS_MAX_ROWS = 40
"""Past this many steps the details list only the steps that are busy or went wrong."""


def live_status(waiting: int, paused: bool) -> RunStatus:
    """A running pipeline's status: paused, waiting for a person (`waiting` steps), or running."""
    if paused:
        return RunStatus.PAUSED
    if waiting:
        return RunStatus.WAITING
    return RunStatus.RUNNING


def counts(records: list[StepRecord]) -> dict[StepStatus, int]:
    return dict(Counter(r.status for r in records))


def total_usage(records: list[StepRecord]) -> TokenUsage:
    """Tokens of every agent step, running ones too."""
    usage = TokenUsage()
    for record in records:
        usage = usage.plus(record.usage)
    return usage


def usage_by_model(records: list[StepRecord]) -> UsageByModel:
    """Tokens and cost of every agent and plan step, children's included, per model."""
    by_model: UsageByModel = {}
    for record in records:
        if record.usage_by_model:
            by_model = add_by_model(by_model, record.usage_by_model)
    return by_model


def elapsed(record: StepRecord, now: datetime) -> timedelta | None:
    """How long the step ran, or has been running as of `now`."""
    if record.started_at is None:
        return None
    return (record.ended_at or now) - record.started_at


def progress(record: StepRecord) -> str | None:
    """How far a for_each step (`7/12 done, 1 failed`) or a loop (`iteration 2/3`) has got."""
    if record.items is not None:
        text = f"{record.items_done or 0}/{record.items} done"
        return f"{text}, {record.items_failed} failed" if record.items_failed else text
    if record.iteration is not None:
        limit = f"/{record.max_iterations}" if record.max_iterations else ""
        return f"iteration {record.iteration}{limit}"
    return None


def step_state(record: StepRecord) -> str:
    """The status with what qualifies it: `RETRYING (attempt 3)`, `WAITING for approval`,
    `RUNNING (7/12 done, 1 failed)`, `RUNNING (iteration 2/3)`."""
    if record.status is StepStatus.RETRYING:
        return f"RETRYING (attempt {record.attempts})"
    if record.status is StepStatus.WAITING and record.waiting_for:
        return f"WAITING for {record.waiting_for}"
    if record.status is StepStatus.RUNNING and record.model_call:
        return f"RUNNING (model call {record.model_call}/{record.max_model_calls})"
    done = progress(record)
    if done and record.status is not StepStatus.PENDING:
        return f"{record.status.value} ({done})"
    return record.status.value


def _seconds(value: timedelta | None) -> str:
    if value is None:
        return ""
    seconds = value.total_seconds()
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def details_markdown(
    pipeline: str,
    status: RunStatus,
    records: list[StepRecord],
    now: datetime,
    *,
    tally: dict[StepStatus, int] | None = None,
    active: Callable[[], list[StepRecord]] | None = None,
) -> str:
    """The pipeline's current details in the Web UI: a small table, one row per step.

    A big pipeline gets a line of counts and rows for the steps worth a look only:
    the details are rebuilt whenever a step changes, and should stay small. Given the
    run's `tally` and `active` steps (kept as statuses change), that costs the same at
    10,000 steps as at 100.
    """
    shown = records
    heading = f"**{pipeline}** · {status.value}"
    if len(records) > DETAILS_MAX_ROWS:
        busy = active() if active else [r for r in records if r.status not in QUIET]
        shown = busy[:DETAILS_MAX_ROWS]
        by_status = tally if tally is not None else counts(records)
        text = ", ".join(f"{n} {s.value.lower()}" for s, n in by_status.items())
        heading += f" · {len(records)} steps: {text}"
    lines = [heading, "", "| step | status | attempts | time |", "|---|---|---|---|"]
    for record in shown:
        attempts = str(record.attempts) if record.attempts else ""
        state = step_state(record)
        if record.child:  # `stepflow status <child>` shows it step by step
            state += f" · child `{_cell(record.child)}`"
        lines.append(f"| {record.id} | {state} | {attempts} | {_seconds(elapsed(record, now))} |")
    for record in shown:
        if record.plan is not None:
            lines.extend(_plan_table(record))
    return "\n".join(lines)


def _plan_table(record: StepRecord) -> list[str]:
    """A plan step's plan under the steps: one row per planned step, as `stepflow status` has."""
    rows = plan_rows(record.plan)
    lines = ["", f"plan of step **{record.id}**", "", "| step | kind | tool / model | depends on |"]
    lines.append("|---|---|---|---|")
    for row in rows[:DETAILS_MAX_ROWS]:
        lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    if len(rows) > DETAILS_MAX_ROWS:
        lines.append(f"| ... {len(rows) - DETAILS_MAX_ROWS} more | | | |")
    return lines


def _cell(text: str) -> str:
    """Text that cannot end its table cell or code span early."""
    return text.replace("|", "\\|").replace("`", "'")


STATUS_OUTPUT_MAX_BYTES = 64 * 1024
"""An output larger than this (as JSON) is summarised in the `status` answer."""
STATUS_OUTPUTS_BUDGET = 512 * 1024
"""Outputs shown whole in one `status` answer, together; past it the rest are summarised.

A query's answer travels inline when no payload store keeps it: a few outputs
of a megabyte each would pass Temporal's 2 MB payload and gRPC's 4 MB message
limits, and `stepflow status` would fail on a run that is doing fine.
"""
SUMMARY_PREVIEW_CHARS = 80


def summarised(records: list[StepRecord]) -> list[StepRecord]:
    """Records for the `status` answer: outputs past the bounds replaced by a summary.

    The summary is `{"$summary": "<1.5 MB str>", "preview": "<its first characters>"}`;
    the run's result keeps every output whole.
    """
    shown: list[StepRecord] = []
    spent = 0
    for record in records:
        if record.output is None:
            shown.append(record)
            continue
        size = len(to_json(record.output, fallback=str))
        if size <= STATUS_OUTPUT_MAX_BYTES and spent + size <= STATUS_OUTPUTS_BUDGET:
            spent += size
            shown.append(record)
        else:
            shown.append(record.model_copy(update={"output": summary(record.output, size)}))
    return shown


def summary(value: Any, size: int) -> dict[str, str]:
    """A small stand-in for a large value: its size and type, and how it begins."""
    text = value if isinstance(value, str) else to_json(value, fallback=str).decode()
    return {
        "$summary": f"<{_size_text(size)} {type(value).__name__}>",
        "preview": text[:SUMMARY_PREVIEW_CHARS],
    }


def _size_text(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
