"""Checks of model chains (`model: [primary, backup, local]`) before a run starts.

`chain_issues` are errors: a chain with no model, or one naming a model twice (the
second would only repeat the first's failure). `chain_model_warnings` are warnings, as
`client.loading.model_warnings` gives for a single name: every name of a chain this
process's model configuration does not know (the workers may be configured differently),
and the single model of a plan step, which `model_warnings` does not look at.
"""

from __future__ import annotations

import os

from stepflow.runtime.settings import Settings, get_settings
from stepflow.workflows.models import OFFLINE_MODEL, AgentStep, PipelineSpec, PlanStep
from stepflow.workflows.spec_issues import SpecIssue, did_you_mean
from stepflow.workflows.validation import all_steps

ModelStep = AgentStep | PlanStep
"""The step kinds whose `model` may be a chain."""


def _model_steps(spec: PipelineSpec) -> list[tuple[str, ModelStep]]:
    return [(path, step) for path, step in all_steps(spec.steps) if isinstance(step, ModelStep)]


def chain_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """Chains that cannot work as written: empty, or naming a model twice."""
    issues: list[SpecIssue] = []
    for path, step in _model_steps(spec):
        if not isinstance(step.model, list):
            continue
        if not step.model:
            issues.append(
                SpecIssue(
                    "a model chain needs at least one model; leave `model` out for the "
                    "worker's default",
                    path,
                    "model",
                )
            )
        seen: set[str] = set()
        for index, name in enumerate(step.model):
            if name in seen:
                issues.append(
                    SpecIssue(
                        f"{name!r} is already in the chain: a model takes over only once",
                        path,
                        f"model[{index}]",
                    )
                )
            seen.add(name)
    return issues


def chain_model_warnings(spec: PipelineSpec, settings: Settings | None = None) -> list[str]:
    """Model names of chains (and of plan steps) this process's configuration does not know.

    Worded as `model_warnings` words them for a single name, with the name's place in
    the chain; also a `model_fallback` on a step without a chain, which does nothing.
    """
    settings = settings or get_settings()
    known = {OFFLINE_MODEL, settings.default_model, *settings.models}
    configured = bool(settings.models) or bool(
        os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
    )
    warnings: list[str] = []
    for path, step in _model_steps(spec):
        if isinstance(step.model, list):
            names = [(f"model[{i}]", name) for i, name in enumerate(step.model)]
        elif isinstance(step, PlanStep) and step.model is not None:
            names = [("model", step.model)]  # an agent step's single name: `model_warnings`
        else:
            names = []
            if step.model_fallback is not None:
                warnings.append(
                    f"step {path!r}: model_fallback does nothing without a model chain "
                    "(model: [primary, backup])"
                )
        for field, name in names:
            if name in known:
                continue
            if settings.models:
                hint = did_you_mean(name, sorted(known))
                warnings.append(
                    f"step {path!r}: {field} {name!r} is not in STEPFLOW_MODELS{hint}; "
                    "it goes to the default endpoint under that name"
                )
            elif not configured:
                warnings.append(
                    f"step {path!r}: {field} {name!r}: no model is configured here "
                    "(OPENAI_API_KEY, OPENAI_BASE_URL, STEPFLOW_MODELS): it will answer offline"
                )
    return list(dict.fromkeys(warnings))
