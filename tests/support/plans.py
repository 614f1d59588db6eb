"""Plan steps and plans as tests write them: a plan step on the run's `topic`, a model's plan,
and planned steps that journal what ran."""

from __future__ import annotations

from typing import Any

from tests.support.helpers import step
from tests.support.tools import journal_read

ALLOW = {"tools": ["echo", "record"], "kinds": ["agent", "tool"], "max_steps": 4}

TOPIC = {"topic": {"type": "string", "default": "tides"}}


def plan_step(step_id: str = "plan", **fields: Any) -> dict[str, Any]:
    """A plan step as a pipeline file writes it; the request is the run's `topic`."""
    return {
        "id": step_id,
        "kind": "plan",
        "instructions": "Plan the work on {{ inputs.topic }}.",
        "input": "{{ inputs.topic }}",
        "allow": fields.pop("allow", ALLOW),
        **fields,
    }


def planned(*steps: dict[str, Any], **outputs: str) -> dict[str, Any]:
    """A plan as the model answers it."""
    plan: dict[str, Any] = {"steps": list(steps)}
    if outputs:
        plan["outputs"] = outputs
    return plan


def recorded(step_id: str, journal: str, value: Any, **fields: Any) -> dict[str, Any]:
    """A step whose tool journals its start and end (`tests.support.tools.record`)."""
    return step(step_id, "record", args={"journal": journal, "value": value}, **fields)


def ran(journal: str) -> list[str]:
    """The steps whose tool ran, in the order they finished."""
    return [e["step"] for e in journal_read(journal) if e["event"] == "end"]
