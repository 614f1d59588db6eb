"""Step runners, one module per step kind, and the registry the pipeline looks kinds up in."""

from __future__ import annotations

from stepflow.workflows.steps.agent import AgentRunner
from stepflow.workflows.steps.base import AnyStep, StepContext, StepRunner
from stepflow.workflows.steps.for_each import ForEachRunner, per_item_condition
from stepflow.workflows.steps.human import HumanRunner
from stepflow.workflows.steps.loop import LoopRunner
from stepflow.workflows.steps.plan import PlanRunner
from stepflow.workflows.steps.subpipeline import SubPipelineRunner
from stepflow.workflows.steps.tool import ToolRunner

RUNNERS: dict[str, StepRunner] = {
    "tool": ToolRunner(),
    "agent": AgentRunner(),
    "approval": HumanRunner(),
    "input": HumanRunner(),
    "loop": LoopRunner(),
    "pipeline": SubPipelineRunner(),
    "plan": PlanRunner(),
}
"""The runner of each step kind (`step.kind`)."""

FOR_EACH = ForEachRunner(RUNNERS)
"""Runs a step with `for_each` as instances, each by its kind's runner."""

HUMAN_KINDS = frozenset({"approval", "input"})
"""Kinds that wait for a person: they take no concurrency slot."""

__all__ = [
    "FOR_EACH",
    "HUMAN_KINDS",
    "RUNNERS",
    "AnyStep",
    "StepContext",
    "StepRunner",
    "per_item_condition",
]
