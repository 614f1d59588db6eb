"""A plan step's plan as a small table: `stepflow status`, `history` and `run` show it so.

One row per planned step (`workflows.plan_rows`, which the Web UI's details
share): its id, kind, what it uses and the steps it depends on.
"""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from stepflow.workflows.models import StepRecord
from stepflow.workflows.plan_rows import plan_outputs, plan_rows

PLAN_TABLE_WIDTH = 100
"""Columns of a plan table written as text lines (`stepflow history`)."""


def plan_table(plan: dict[str, Any], title: str | None = None) -> Table:
    """The plan's steps, one row each: id, kind, tool or model (and tools), depends on."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("step")
    table.add_column("kind")
    table.add_column("tool / model")
    table.add_column("depends on")
    for row in plan_rows(plan):
        table.add_row(*row)
    outputs = plan_outputs(plan)
    if outputs:
        table.caption = "outputs: " + ", ".join(outputs)
        table.caption_justify = "left"
    return table


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
