"""A plan step's plan as a small table: `stepflow status`, `history` and `run` show it so.

One row per planned step: its id, kind, what it uses (a tool step's tool; an
agent step's model and tools) and the steps it depends on. The plan is what the
model answered and the model activity checked (`StepRecord.plan`); this reads
it defensively all the same, since a table must never fail a command.
"""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from stepflow.workflows.models import StepRecord

PLAN_TABLE_WIDTH = 100
"""Columns of a plan table written as text lines (`stepflow history`)."""


def plan_table(plan: dict[str, Any], title: str | None = None) -> Table:
    """The plan's steps, one row each: id, kind, tool or model (and tools), depends on."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("step")
    table.add_column("kind")
    table.add_column("tool / model")
    table.add_column("depends on")
    steps = plan.get("steps") if isinstance(plan, dict) else None
    for raw in steps if isinstance(steps, list) else []:
        if not isinstance(raw, dict):
            continue
        depends = raw.get("depends_on")
        table.add_row(
            str(raw.get("id", "?")),
            str(raw.get("kind", "?")),
            _uses(raw),
            ", ".join(str(d) for d in depends) if isinstance(depends, list) and depends else "-",
        )
    outputs = plan.get("outputs") if isinstance(plan, dict) else None
    if isinstance(outputs, dict) and outputs:
        table.caption = "outputs: " + ", ".join(str(name) for name in outputs)
        table.caption_justify = "left"
    return table


def _uses(step: dict[str, Any]) -> str:
    """A tool step's tool; an agent step's model (`default` if none) and its tools."""
    if step.get("kind") == "tool":
        return str(step.get("tool", "?"))
    model = step.get("model") or "default model"
    tools = step.get("tools")
    if isinstance(tools, list) and tools:
        return f"{model}; tools: {', '.join(str(t) for t in tools)}"
    return str(model)


def print_plans(console: Console, records: list[StepRecord]) -> None:
    """Under a run's steps table: the plan of each plan step that has made one."""
    for record in records:
        if record.plan is not None:
            console.print(plan_table(record.plan, title=f"plan of step {record.id}"))


def plan_lines(plan: dict[str, Any], title: str | None = None) -> list[str]:
    """The plan table as plain text lines, for output that is lines (`stepflow history`)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=PLAN_TABLE_WIDTH, color_system=None, highlight=False)
    table = plan_table(plan, title)
    table.box = box.SIMPLE  # no column rules: the lines read as text
    console.print(table)
    return [line.rstrip() for line in buffer.getvalue().splitlines() if line.strip()]


def is_plan(value: Any) -> bool:
    """Whether `value` looks like a plan: an object with a list of `steps`."""
    return isinstance(value, dict) and isinstance(value.get("steps"), list)
