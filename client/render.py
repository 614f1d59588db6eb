"""How results look in a terminal: a table of steps and a one-line summary."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from workflows.models import OFFLINE_MODEL, PipelineResult, PipelineStatus, StepRecord, StepStatus

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


def _detail(record: StepRecord) -> Text:
    if record.used_fallback:
        return Text(f"fallback {preview(record.output, 30)} ({record.error})", style="yellow")
    if record.status is StepStatus.SUCCEEDED:
        return Text(preview(record.output))
    if record.error:
        return Text(f"{record.error_type}: {record.error}", style="red")
    return Text(record.reason or "", style="dim")


def _model(record: StepRecord) -> Text:
    """Agent steps: the model (the offline one stands out), its calls, tools and tokens."""
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
    return text


def steps_table(result: PipelineResult) -> Table:
    agents = any(record.model is not None for record in result.steps)
    table = Table(title=f"pipeline {result.pipeline}", title_justify="left")
    table.add_column("step")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("time", justify="right")
    if agents:
        table.add_column("model")
    table.add_column("output / error")
    for record in result.steps:
        cells: list[str | Text] = [
            record.id,
            Text(record.status.value, style=STATUS_STYLE[record.status]),
            str(record.attempts) if record.attempts else "-",
            format_seconds(record.duration),
        ]
        if agents:
            cells.append(_model(record))
        table.add_row(*cells, _detail(record))
    return table


def usage_line(result: PipelineResult) -> str | None:
    """Tokens of the whole run, and a warning when the offline model answered."""
    usage = result.usage
    if not usage.model_calls:
        return None
    line = (
        f"{usage.model_calls} model calls, {usage.prompt_tokens:,} prompt + "
        f"{usage.completion_tokens:,} completion = {usage.total_tokens:,} tokens"
    )
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


def print_result(console: Console, result: PipelineResult) -> None:
    console.print(steps_table(result))
    usage = usage_line(result)
    if usage:
        console.print(Text(usage, style="dim"))
    style = "green" if result.status is PipelineStatus.SUCCEEDED else "red"
    console.print(Text(summary_line(result), style=style))
