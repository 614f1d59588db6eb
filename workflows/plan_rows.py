"""A plan step's plan as rows: what the CLI's tables and the Web UI's details show of it.

One row per planned step: its id, kind, what it uses (a tool step's tool; an
agent step's model and tools) and the steps it depends on. The plan is what the
model answered and the model activity checked (`StepRecord.plan`); this reads it
defensively all the same, since showing a plan must never fail a command or a
workflow task. Pure: imported in the workflow sandbox.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class PlanRow(NamedTuple):
    step: str
    kind: str
    uses: str
    depends_on: str


def plan_rows(plan: Any) -> list[PlanRow]:
    """The planned steps, in plan order (nothing for something that is not a plan)."""
    steps = plan.get("steps") if isinstance(plan, dict) else None
    rows = []
    for raw in steps if isinstance(steps, list) else []:
        if not isinstance(raw, dict):
            continue
        depends = raw.get("depends_on")
        rows.append(
            PlanRow(
                str(raw.get("id", "?")),
                str(raw.get("kind", "?")),
                _uses(raw),
                ", ".join(str(d) for d in depends)
                if isinstance(depends, list) and depends
                else "-",
            )
        )
    return rows


def plan_outputs(plan: Any) -> list[str]:
    """The names of what the plan returns (`outputs`), if it names any."""
    outputs = plan.get("outputs") if isinstance(plan, dict) else None
    return [str(name) for name in outputs] if isinstance(outputs, dict) else []


def _uses(step: dict[str, Any]) -> str:
    """A tool step's tool; an agent step's model (`default model` if none) and its tools."""
    if step.get("kind") == "tool":
        return str(step.get("tool", "?"))
    model = step.get("model") or "default model"
    tools = step.get("tools")
    if isinstance(tools, list) and tools:
        return f"{model}; tools: {', '.join(str(t) for t in tools)}"
    return str(model)
