"""Step runners, one module per step kind, and the registry the pipeline looks kinds up in."""

from __future__ import annotations

from stepflow.workflows.steps.agent import AgentRunner
from stepflow.workflows.steps.base import AnyStep, StepContext, StepRunner
from stepflow.workflows.steps.human import HumanRunner
from stepflow.workflows.steps.tool import ToolRunner

RUNNERS: dict[str, StepRunner] = {
    "tool": ToolRunner(),
    "agent": AgentRunner(),
    "approval": HumanRunner(),
    "input": HumanRunner(),
}
"""The runner of each step kind (`step.kind`)."""

HUMAN_KINDS = frozenset({"approval", "input"})
"""Kinds that wait for a person: they take no concurrency slot."""

__all__ = ["HUMAN_KINDS", "RUNNERS", "AnyStep", "StepContext", "StepRunner"]
