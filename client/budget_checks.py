"""Budgets checked before a run starts: a `cost` budget needs a price for every model under it.

A cost counted as zero because a model has no price would let a run spend without
limit while its budget reads as untouched, so a pipeline where a `budget` with
`cost` covers an agent or plan step whose model has no price is refused (exit 2),
naming the step. "Under it" means the run's budget over every step, nested ones
too, a sub-pipeline file's own budget over its steps, and a step's own budget.

The prices are this process's model configuration (`STEPFLOW_MODELS`), as the
other client checks read theirs; the worker checks again at each call
(`ModelUnpriced`). The built-in offline model is free, so it counts as priced,
and so does a model that would answer offline here (nothing configured).
"""

from __future__ import annotations

from collections.abc import Iterator

from stepflow.activities.model_endpoint import ModelNotConfigured, resolve_endpoint
from stepflow.runtime.settings import Settings, get_settings
from stepflow.workflows.models import (
    AgentStep,
    BudgetSpec,
    LoopStep,
    PipelineSpec,
    PipelineStep,
    PlanStep,
    Step,
)
from stepflow.workflows.spec_issues import SpecIssue


def budget_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """A `SpecIssue` (field `budget`) per step and model a cost budget covers without a price."""
    settings = get_settings()
    run_budget = "the run's" if _has_cost(spec.budget) else None
    issues = []
    for path, step, whose in _covered_steps(spec.steps, run_budget):
        for model in _models(step, settings):
            if not _priced(model, settings):
                issues.append(
                    SpecIssue(
                        f"{whose} budget has a `cost`, but model {model!r} has no price here: "
                        f"add it to STEPFLOW_MODELS, e.g. "
                        f'{{"{model}": {{"price": {{"input": 2.5, "output": 10}}}}}} '
                        "(USD per million tokens), or budget `tokens` only",
                        path,
                        "budget",
                    )
                )
    return list(dict.fromkeys(issues))


def _has_cost(budget: BudgetSpec | None) -> bool:
    return budget is not None and budget.cost is not None


def _covered_steps(
    steps: list[Step], budget: str | None, prefix: str = ""
) -> Iterator[tuple[str, AgentStep | PlanStep, str]]:
    """Agent and plan steps under a cost budget: path, step, and whose budget it is."""
    for step in steps:
        path = f"{prefix}{step.id}"
        if isinstance(step, AgentStep | PlanStep):
            whose = "the step's" if _has_cost(step.budget) else budget
            if whose is not None:
                yield path, step, whose
        elif isinstance(step, LoopStep):
            yield from _covered_steps(step.steps, budget, f"{path}.")
        elif isinstance(step, PipelineStep):
            if isinstance(step.pipeline, PipelineSpec):
                own = "the sub-pipeline's" if _has_cost(step.pipeline.budget) else None
                yield from _covered_steps(step.pipeline.steps, budget or own, f"{path}.")
            elif step.steps is not None:
                yield from _covered_steps(step.steps, budget, f"{path}.")


def _models(step: AgentStep | PlanStep, settings: Settings) -> list[str]:
    """Every model the step's calls may go to: each of a chain, the default for none.

    A plan's agent steps call the models its `allow` names, or the default.
    """
    names = _chain(step.model, settings)
    if isinstance(step, PlanStep) and "agent" in step.allow.kinds:
        names += step.allow.models or [settings.default_model]
    return list(dict.fromkeys(names))


def _chain(model: str | list[str] | None, settings: Settings) -> list[str]:
    if model is None:
        return [settings.default_model]
    return [model] if isinstance(model, str) else list(model)


def _priced(model: str, settings: Settings) -> bool:
    """Whether a call to `model` would know its cost, as this process is configured."""
    try:
        return resolve_endpoint(model, settings).price is not None
    except ModelNotConfigured:  # no key here; the worker may have it: its price is what counts
        configured = settings.models.get(model)
        return configured is not None and configured.price is not None
