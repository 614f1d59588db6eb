"""How results look in a terminal: a table of steps and a one-line summary."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from stepflow.client.plan_view import print_plans
from stepflow.workflows.budget import budget_line, money
from stepflow.workflows.control import PipelineState, RunStatus
from stepflow.workflows.models import (
    OFFLINE_MODEL,
    PipelineResult,
    PipelineStatus,
    StepRecord,
    StepStatus,
)
from stepflow.workflows.run_view import progress

STATUS_STYLE = {
    StepStatus.PENDING: "dim",
    StepStatus.RUNNING: "cyan",
    StepStatus.RETRYING: "yellow",
    StepStatus.WAITING: "magenta",
    StepStatus.SUCCEEDED: "green",
    StepStatus.FAILED: "red",
    StepStatus.TIMED_OUT: "red",
    StepStatus.SKIPPED: "dim",
    StepStatus.CANCELLED: "yellow",
    StepStatus.REUSED: "green dim",
}


def format_seconds(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def preview(value: Any, width: int = 60) -> str:
    """A one-line glimpse of an output."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def status_text(record: StepRecord) -> str:
    """The status with what qualifies it: `RETRYING (attempt 3)`, `WAITING for approval`,
    a for_each step's `RUNNING (7/12 done, 1 failed)`, a loop's `RUNNING (iteration 2/3)`."""
    if record.status is StepStatus.RETRYING:
        return f"RETRYING (attempt {record.attempts})"
    if record.status is StepStatus.WAITING and record.waiting_for:
        return f"WAITING for {record.waiting_for}"
    done = progress(record)
    if done and record.status is not StepStatus.PENDING:
        return f"{record.status.value} ({done})"
    return record.status.value


def elapsed(record: StepRecord, now: datetime | None) -> timedelta | None:
    """How long the step ran, or (with `now`) has been running so far."""
    if record.started_at is None:
        return None
    end = record.ended_at or now
    return end - record.started_at if end else None


def _detail(record: StepRecord) -> Text:
    if record.used_fallback:
        text = Text(f"fallback {preview(record.output, 30)} ({record.error})", style="yellow")
        return _with_child(text, record)
    if record.status is StepStatus.WAITING:
        return Text(
            preview(record.message or f"waiting for {record.waiting_for}", 90), style="magenta"
        )
    if record.status is StepStatus.SUCCEEDED:
        text = Text(preview(record.output))
    elif record.error:
        text = Text(f"{record.error_type}: {record.error}", style="red")
    else:
        text = Text(record.reason or "", style="dim")
    if record.comment and record.comment not in text.plain:
        text.append(f" ({record.comment})", style="dim")
    return _with_child(text, record)


def _with_child(text: Text, record: StepRecord) -> Text:
    """A loop's (current) iteration or a sub-pipeline is a run: `stepflow status <child>`."""
    if record.child:
        text.append(f"{' ' if text.plain else ''}child {record.child}", style="dim")
    return text


def _model(record: StepRecord) -> Text:
    """Agent steps: the model (the offline one stands out), its calls, tools and tokens."""
    running = record.status in (StepStatus.RUNNING, StepStatus.RETRYING)
    if running and record.model_call:
        limit = f"/{record.max_model_calls}" if record.max_model_calls else ""
        text = Text(f"{record.model + ', ' if record.model else ''}call {record.model_call}{limit}")
        if record.usage:
            text.append(f", {record.usage.total_tokens:,} tok", style="dim")
            if record.usage.cost:
                text.append(f", {money(record.usage.cost)}", style="dim")
        return text
    if record.model is None:
        return Text("-", style="dim")
    usage = record.usage
    text = Text(record.model, style="magenta" if record.model == OFFLINE_MODEL else "")
    if usage:
        text.append(f", {usage.model_calls} call{'s' if usage.model_calls != 1 else ''}")
    if record.tool_calls:
        text.append(f", {record.tool_calls} tool call{'s' if record.tool_calls != 1 else ''}")
    if usage:
        text.append(f", {usage.total_tokens:,} tok", style="dim")
        if usage.cost:
            text.append(f", {money(usage.cost)}", style="dim")
    return text


def steps_table(
    pipeline: str, records: list[StepRecord], now: datetime | None = None, detail: bool = True
) -> Table:
    """One row per step; `now` gives running steps their elapsed time so far."""
    agents = any(r.kind == "agent" or r.model is not None for r in records)
    table = Table(title=f"pipeline {pipeline}", title_justify="left")
    table.add_column("step")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("time", justify="right")
    if agents:
        table.add_column("model")
    if detail:
        table.add_column("output / error")
    for record in records:
        cells: list[str | Text] = [
            record.id,
            Text(status_text(record), style=STATUS_STYLE[record.status]),
            str(record.attempts) if record.attempts else "-",
            format_seconds(elapsed(record, now)),
        ]
        if agents:
            cells.append(_model(record))
        if detail:
            cells.append(_detail(record))
        table.add_row(*cells)
    return table


def usage_line(result: PipelineResult | PipelineState) -> str | None:
    """Tokens and cost of the whole run (per model when several answered), the spend
    against the run's budget, and a warning when the offline model answered."""
    usage = result.usage
    budget = budget_line(result.budget) if result.budget is not None else None
    if not usage.model_calls:
        return budget
    line = (
        f"{usage.model_calls} model call{'s' if usage.model_calls != 1 else ''}, "
        f"{usage.prompt_tokens:,} prompt + "
        f"{usage.completion_tokens:,} completion = {usage.total_tokens:,} tokens"
    )
    if usage.cost:
        line += f", {money(usage.cost)}"
    if len(result.usage_by_model) > 1:
        line += "\nper model: " + "; ".join(
            f"{model} {used.total_tokens:,} tokens" + (f", {money(used.cost)}" if used.cost else "")
            for model, used in sorted(result.usage_by_model.items())
        )
    if budget:
        line += f"\n{budget}"
    if any(record.model == OFFLINE_MODEL for record in result.steps):
        line += (
            "\nanswered by the built-in offline model (deterministic, no network); "
            "set OPENAI_API_KEY or OPENAI_BASE_URL on the worker for a real one"
        )
    return line


def summary_line(result: PipelineResult) -> str:
    counts = Counter(record.status.value.lower().replace("_", " ") for record in result.steps)
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    took = format_seconds(result.ended_at - result.started_at)
    if result.status is PipelineStatus.SUCCEEDED:
        return f"pipeline {result.pipeline} succeeded in {took} ({parts})"
    return f"pipeline {result.pipeline} FAILED after {took} ({parts}): {result.error}"


OUTPUT_SHOWN_CHARS = 4000
"""A pipeline output longer than this is cut in the table `run` prints (`--json` has it all)."""


def outputs_text(outputs: dict[str, Any]) -> Text:
    """A pipeline's declared `outputs`, one per line: text as it is, anything else as JSON."""
    text = Text("outputs", style="bold")
    for name, value in outputs.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(shown) > OUTPUT_SHOWN_CHARS:
            more = len(shown) - OUTPUT_SHOWN_CHARS
            shown = f"{shown[:OUTPUT_SHOWN_CHARS]}… ({more:,} more characters; --json shows all)"
        text.append(f"\n  {name}: ", style="bold")
        text.append(shown.replace("\n", "\n    "))
    return text


def print_result(console: Console, result: PipelineResult) -> None:
    console.print(steps_table(result.pipeline, result.steps))
    print_plans(console, result.steps)
    if result.outputs:
        console.print(outputs_text(result.outputs))
    usage = usage_line(result)
    if usage:
        console.print(Text(usage, style="dim"))
    style = "green" if result.status is PipelineStatus.SUCCEEDED else "red"
    console.print(Text(summary_line(result), style=style))


RUN_STYLE = {
    RunStatus.RUNNING: "cyan",
    RunStatus.PAUSED: "yellow",
    RunStatus.WAITING: "magenta",
    RunStatus.SUCCEEDED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
}


COUNT_ORDER = [
    StepStatus.SUCCEEDED,
    StepStatus.REUSED,
    StepStatus.FAILED,
    StepStatus.TIMED_OUT,
    StepStatus.CANCELLED,
    StepStatus.SKIPPED,
    StepStatus.RUNNING,
    StepStatus.RETRYING,
    StepStatus.WAITING,
    StepStatus.PENDING,
]


def counts_line(state: PipelineState) -> str:
    """`2 succeeded, 1 running, 1 waiting, 3 pending`: what is done first, then what is not."""
    return ", ".join(
        f"{state.counts[status]} {status.value.lower().replace('_', ' ')}"
        for status in COUNT_ORDER
        if state.counts.get(status)
    )


def state_now(state: PipelineState) -> datetime:
    """Running steps' elapsed time counts to the wall clock; an ended run's to its end."""
    return state.as_of if state.finished else max(state.as_of, datetime.now(UTC))


def run_line(state: PipelineState, closed_as: str | None = None) -> Text:
    """`run X RUNNING for 12.3s` or `... SUCCEEDED in 3.2s`; `closed_as` is Temporal's word
    for a run that ended without saying so itself (TERMINATED, TIMED_OUT)."""
    if closed_as and closed_as != state.status.value:
        return Text(
            f"run {state.workflow_id} {closed_as} (last reported {state.status.value})", style="red"
        )
    took = format_seconds(state_now(state) - state.started_at)
    when = f"in {took}" if state.finished else f"for {took}"
    line = Text(
        f"run {state.workflow_id} {state.status.value} {when}", style=RUN_STYLE[state.status]
    )
    if state.error:
        line.append(f": {state.error}")
    return line


def print_state(
    console: Console, state: PipelineState, ui_url: str, closed_as: str | None = None
) -> None:
    """What `stepflow status` shows: the steps, counts, tokens, the run and its Web UI link."""
    console.print(steps_table(state.pipeline, state.steps, now=state_now(state)))
    print_plans(console, state.steps)
    console.print(Text(counts_line(state), style="dim"))
    usage = usage_line(state)
    if usage:
        console.print(Text(usage, style="dim"))
    console.print(run_line(state, closed_as))
    console.print(f"Web UI: {ui_url}", highlight=False)
