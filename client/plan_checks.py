"""Checks of plans: a plan step in a pipeline file, and the plan a model makes at run time.

`plan_step_issues(spec)` is what `stepflow validate` adds for plan steps: the
tools they allow are registered (or served by a configured MCP server), and the
workflow ids of the steps a plan may make fit Temporal's limit. The checks that
need no registry are in `workflows.validation`, which the workflow runs too.

`plan_issues(plan, allow)` checks a model's plan as a pipeline file is checked
(the pipeline models, `workflows.validation`, `client.loading`'s templates and
limits, each tool's argument schema) plus the step's `allow`: a tool, kind or
model outside it, more steps than `max_steps`, fields a plan may not set. It
runs in the model activity (`activities.plan_check`), so it does no I/O: MCP
tools are those the worker has listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from stepflow.activities.output_schema import OutputSchemaError, UnsafeSchema, resolve_output_schema
from stepflow.activities.plan_check import MAX_PLANNED_ID_LENGTH, PLANNED_FIELDS
from stepflow.activities.registry import all_tools, get_tool, load_tool_modules
from stepflow.client.loading import (
    MAX_WORKFLOW_ID_BYTES,
    NESTING_ID_BYTES,
    limit_issues,
    template_issues,
)
from stepflow.client.spec_parsing import issues_from_validation_error
from stepflow.runtime.mcp_config import servers_of, tool_server, unknown_server_hint
from stepflow.runtime.settings import get_settings
from stepflow.workflows.durations import format_duration
from stepflow.workflows.models import (
    BUILTIN_RETRY,
    AgentStep,
    LoopStep,
    PipelineSpec,
    PipelineStep,
    PlanAllow,
    PlanStep,
    Step,
    StepDefaults,
    ToolStep,
    model_call_retry,
)
from stepflow.workflows.steps.plan import PLANNED_RUN, REQUEST_INPUT, planner_step
from stepflow.workflows.validation import SpecIssue, did_you_mean, structural_issues

PLAN_NAME = "plan"
"""The name a plan is checked under (the run gives it its pipeline's)."""

STEP_FIELDS = {
    "tool": frozenset(ToolStep.model_fields),
    "agent": frozenset(AgentStep.model_fields),
}


# -- a model's plan ------------------------------------------------------------------------


def plan_issues(plan: Any, allow: PlanAllow) -> list[SpecIssue]:
    """What is wrong with `plan` (parsed JSON) as a pipeline within `allow`; [] if nothing."""
    if not isinstance(plan, dict):
        return [SpecIssue("a plan is a JSON object with `steps` and, optionally, `outputs`")]
    issues = [
        SpecIssue("a plan has only `steps` and `outputs`", field=key)
        for key in plan
        if key not in ("steps", "outputs")
    ]
    steps = plan.get("steps")
    if not isinstance(steps, list) or not steps:
        return [*issues, SpecIssue("give at least one step, as a list", field="steps")]
    if len(steps) > allow.max_steps:
        issues.append(
            SpecIssue(
                f"{len(steps)} steps, over the {allow.max_steps} this plan may have "
                "(allow.max_steps)",
                field="steps",
            )
        )
    for index, raw in enumerate(steps):
        issues.extend(_allow_issues(index, raw, allow))
    raw_spec: dict[str, Any] = {
        "name": PLAN_NAME,
        "inputs": {REQUEST_INPUT: {"type": "any"}},
        "steps": steps,
    }
    if plan.get("outputs") is not None:
        raw_spec["outputs"] = plan["outputs"]
    try:
        spec = PipelineSpec.model_validate(raw_spec)
    except ValidationError as err:
        return list(dict.fromkeys([*issues, *issues_from_validation_error(err, raw_spec)]))
    found = (
        structural_issues(spec)
        + template_issues(spec)
        + limit_issues(spec)
        + _tool_issues(spec, allow)
    )
    return _in_plan_order(spec.steps, [*issues, *found])


def _in_plan_order(steps: list[Step], issues: list[SpecIssue]) -> list[SpecIssue]:
    """Each issue once: the plan's own first, then step by step in the plan's order."""
    order = {step.id: index for index, step in enumerate(steps)}

    def position(issue: SpecIssue) -> int:
        if issue.step is None:
            return -1
        return order.get(issue.step.split(".")[0], len(order))

    return sorted(dict.fromkeys(issues), key=position)


def _allow_issues(index: int, raw: Any, allow: PlanAllow) -> Iterator[SpecIssue]:
    """A step's kind, tools, model and fields against what the plan may use."""
    if not isinstance(raw, dict):
        return  # the models say what a step is
    step_id = raw.get("id")
    where = step_id if isinstance(step_id, str) and step_id else f"#{index + 1}"
    kind = raw.get("kind")
    if kind not in allow.kinds:
        allowed = ", ".join(allow.kinds)
        yield SpecIssue(f"kind {kind!r} is not allowed in this plan (allowed: {allowed})", where)
        return
    if isinstance(step_id, str) and len(step_id) > MAX_PLANNED_ID_LENGTH:
        yield SpecIssue(f"longer than {MAX_PLANNED_ID_LENGTH} characters", where, "id")
    for key in raw:
        if key not in PLANNED_FIELDS[kind] and key in STEP_FIELDS[kind]:
            yield SpecIssue("may not be set in a plan (the pipeline decides it)", where, key)
    tools = ", ".join(allow.tools) or "none"
    if kind == "tool":
        tool = raw.get("tool")
        if isinstance(tool, str) and tool not in allow.tools:
            yield SpecIssue(
                f"tool {tool!r} is not allowed in this plan (allowed: {tools})", where, "tool"
            )
        return
    given = raw.get("tools")
    for position, tool in enumerate(given if isinstance(given, list) else []):
        if isinstance(tool, str) and tool not in allow.tools:
            yield SpecIssue(
                f"tool {tool!r} is not allowed in this plan (allowed: {tools})",
                where,
                f"tools[{position}]",
            )
    model = raw.get("model")
    if model is not None and not allow.models:
        yield SpecIssue(
            "this plan may not choose a model (allow.models is empty): leave it out", where, "model"
        )
    elif model is not None and model not in allow.models:
        yield SpecIssue(
            f"model {model!r} is not allowed in this plan (allowed: {', '.join(allow.models)})",
            where,
            "model",
        )
    if isinstance(raw.get("output_schema"), str):
        yield SpecIssue(
            "in a plan, give the JSON schema itself (an object)", where, "output_schema"
        )


def _tool_issues(spec: PipelineSpec, allow: PlanAllow) -> list[SpecIssue]:
    """`client.loading.tool_issues` without its I/O: the tools this process has, each call's
    literal arguments against its schema, agent steps' output schemas. Tools outside
    `allow` are said to be so already."""
    issues = []
    for step in spec.steps:
        if isinstance(step, ToolStep):
            definition = get_tool(step.tool)
            if step.tool not in allow.tools:
                continue
            if definition is None:
                issues.append(SpecIssue(f"unknown tool {step.tool!r}", step.id, "tool"))
                continue
            for field, message in definition.check_static_args(step.args):
                issues.append(SpecIssue(message, step.id, f"args.{field}"))
        elif isinstance(step, AgentStep):
            for index, name in enumerate(step.tools):
                if name in allow.tools and get_tool(name) is None:
                    issues.append(SpecIssue(f"unknown tool {name!r}", step.id, f"tools[{index}]"))
            if step.output_schema is not None:
                try:
                    resolve_output_schema(step.output_schema)
                except (OutputSchemaError, UnsafeSchema) as err:
                    issues.append(SpecIssue(str(err), step.id, "output_schema"))
    return issues


# -- plan steps in a pipeline file ---------------------------------------------------------


def plan_step_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """What `stepflow validate` adds for plan steps: tools the registry has, room for ids,
    and the planner's retry settings (as `limit_issues` checks an agent step's)."""
    plans = list(_plan_steps(spec.steps, spec.defaults))
    if not plans:
        return []
    load_tool_modules(get_settings().tool_modules)
    unread, read = _mcp_tools([name for _, step, _ in plans for name in step.allow.tools])
    issues = [SpecIssue(problem) for problem in unread.values()]
    known = [t.name for t in all_tools()] + read
    run_id_bytes = len(spec.name.encode()) + 9  # `<name>-<8 hex digits>`
    for path, step, defaults in plans:
        for index, name in enumerate(step.allow.tools):
            if get_tool(name) is None and tool_server(name) not in unread:
                hint = did_you_mean(name, known) or unknown_server_hint(
                    name, get_settings().mcp_servers
                )
                issues.append(
                    SpecIssue(f"unknown tool {name!r}{hint}", path, f"allow.tools[{index}]")
                )
        # `<run>/<path...>/plan/<planned step>`: the deepest id a plan's step gets.
        levels = [*path.split("."), PLANNED_RUN, "x" * MAX_PLANNED_ID_LENGTH]
        if run_id_bytes + sum(len(p.encode()) + NESTING_ID_BYTES for p in levels) > (
            MAX_WORKFLOW_ID_BYTES
        ):
            issues.append(
                SpecIssue(
                    f"nested too deep: the workflow ids of its plan's steps would pass "
                    f"Temporal's {MAX_WORKFLOW_ID_BYTES:,}-byte limit (use shorter step ids)",
                    path,
                    "id",
                )
            )
        retry = model_call_retry(planner_step(step), defaults)
        initial = retry.initial_interval or BUILTIN_RETRY.initial_interval
        if retry.max_interval is not None and initial and retry.max_interval < initial:
            issues.append(
                SpecIssue(
                    f"max_interval ({format_duration(retry.max_interval)}) is shorter than "
                    f"initial_interval ({format_duration(initial)})",
                    path,
                    "retry",
                )
            )
    return issues


def _plan_steps(
    steps: list[Step], defaults: StepDefaults, prefix: str = ""
) -> Iterator[tuple[str, PlanStep, StepDefaults]]:
    """Every plan step, nested ones too, with its path and the defaults it runs with."""
    for step in steps:
        path = f"{prefix}{step.id}"
        if isinstance(step, PlanStep):
            yield path, step, defaults
        elif isinstance(step, LoopStep):
            yield from _plan_steps(step.steps, defaults, f"{path}.")
        elif isinstance(step, PipelineStep):
            if isinstance(step.pipeline, PipelineSpec):
                yield from _plan_steps(step.pipeline.steps, step.pipeline.defaults, f"{path}.")
            elif step.steps is not None:
                yield from _plan_steps(step.steps, defaults, f"{path}.")


def _mcp_tools(names: list[str]) -> tuple[dict[str, str], list[str]]:
    """Read the tools of the configured MCP servers `names` belong to: why each server that
    could not be read could not, and the names of the tools read."""
    servers = servers_of(names)
    if not servers & set(get_settings().mcp_servers):
        return {}, []
    from stepflow.activities.mcp.discovery import load_mcp_tools  # slow to import

    listing = load_mcp_tools(servers)
    return listing.problems, [defn.name for defn in listing.tools]
