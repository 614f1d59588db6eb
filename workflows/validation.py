"""Checks of a pipeline that need no tool registry: ids, dependencies, cycles, references, inputs.

The client runs these (plus the tool checks in `client.loading`) before
anything starts; the workflow runs them again on its input, so a run started
some other way (a script, the `temporal` CLI) fails at once instead of
half-way. Pure functions: imported in the workflow sandbox.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from pydantic import TypeAdapter, ValidationError

from stepflow.workflows.flow_checks import SCOPED, control_issues
from stepflow.workflows.json_schemas import check_schema, outside_refs
from stepflow.workflows.models import (
    AgentStep,
    ApprovalStep,
    InputStep,
    InputType,
    LoopStep,
    PipelineSpec,
    PipelineStep,
    PlanApproval,
    PlanStep,
    Step,
    ToolStep,
)
from stepflow.workflows.spec import MAX_INLINE_MODEL_CALLS
from stepflow.workflows.spec_issues import MAX_ISSUE_LENGTH as MAX_ISSUE_LENGTH
from stepflow.workflows.spec_issues import SpecError as SpecError
from stepflow.workflows.spec_issues import SpecIssue as SpecIssue
from stepflow.workflows.spec_issues import did_you_mean as did_you_mean
from stepflow.workflows.templates import TemplateError, iter_references


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a path that returns to its start (`a -> b -> a`), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, []):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


_DECIDES = ("approve", "reject")


def structural_issues(
    spec: PipelineSpec,
    *,
    output_schema_refs: bool = True,
    outside: Collection[str] = (),
    in_loop: bool = False,
) -> list[SpecIssue]:
    """Duplicate ids, unknown or self dependencies, cycles, and references to undeclared things.

    Loop bodies and sub-pipelines are checked the same way, their issues named by
    the path to the step (`revise.write`).

    Args:
        output_schema_refs: refuse an `output_schema` whose `$ref` points outside it. Off only
            for runs that started before the workflow refused them (they replay as they ran).
        outside: Steps of an enclosing run these steps may also depend on (a loop's
            dependencies, seen from its body).
        in_loop: The steps are a loop's body: `loop` exists in their templates.
    """
    issues = _steps_issues(
        spec.steps, set(spec.inputs), frozenset(outside), in_loop, output_schema_refs
    )
    if spec.outputs is not None:
        ids = [s.id for s in spec.steps]
        for name, value in spec.outputs.items():
            issues.extend(
                _reference_issues(
                    set(spec.inputs), None, ids, f"outputs.{name}", value, frozenset()
                )
            )
    return issues


def _steps_issues(
    steps: list[Step],
    inputs: set[str],
    outside: frozenset[str],
    in_loop: bool,
    output_schema_refs: bool,
) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    seen: set[str] = set()
    for step in steps:
        if step.id in seen:
            issues.append(SpecIssue("duplicate step id", step.id, "id"))
        elif step.id in outside:
            issues.append(
                SpecIssue(
                    "a loop's step cannot have the id of a step the loop depends on", step.id, "id"
                )
            )
        seen.add(step.id)

    for step in steps:
        for dep in step.depends_on:
            if dep == step.id:
                issues.append(SpecIssue("a step cannot depend on itself", step.id, "depends_on"))
            elif dep not in seen and dep not in outside:
                hint = did_you_mean(dep, seen | outside)
                issues.append(SpecIssue(f"unknown step {dep!r}{hint}", step.id, "depends_on"))
        scopes = frozenset(
            [
                *(("item", "index") if getattr(step, "for_each", None) else ()),
                *(("loop",) if in_loop else ()),
            ]
        )
        # A loop's steps see the outputs of the loop's dependencies without naming them.
        visible = [*step.depends_on, *sorted(outside)]
        for field, value in templated_fields(step):
            issues.extend(_reference_issues(inputs, step.id, visible, field, value, scopes))
        issues.extend(control_issues(step, inputs, scopes, visible))
        if isinstance(step, AgentStep):
            for tool in [t for t in dict.fromkeys(step.tools) if step.tools.count(t) > 1]:
                issues.append(SpecIssue(f"tool {tool!r} is listed twice", step.id, "tools"))
            for tool in [t for t in step.local_tools if t not in step.tools]:
                issues.append(
                    SpecIssue(f"tool {tool!r} is not in the step's tools", step.id, "local_tools")
                )
            if step.inline and step.max_model_calls > MAX_INLINE_MODEL_CALLS:
                issues.append(
                    SpecIssue(
                        f"an inline agent step makes at most {MAX_INLINE_MODEL_CALLS} model "
                        f"calls (its calls go into the pipeline's history), not "
                        f"{step.max_model_calls}: lower it, or drop `inline`",
                        step.id,
                        "max_model_calls",
                    )
                )
        # `fail` is what happens anyway (and what runs recorded before it was optional carry).
        if isinstance(step, ApprovalStep) and not step.timeout and step.on_timeout in _DECIDES:
            issues.append(SpecIssue("has no effect without a timeout", step.id, "on_timeout"))
        if isinstance(step, InputStep):
            issues.extend(SpecIssue(p, step.id, "schema") for p in check_schema(step.value_schema))
        if isinstance(step, PlanStep):
            issues.extend(_plan_step_issues(step))
        # The rest of an output schema is checked where it is used (activities.output_schema);
        # a reference outside it would be fetched by whoever checks it, so it never gets there.
        if (
            output_schema_refs
            and isinstance(step, AgentStep)
            and isinstance(step.output_schema, dict)
        ):
            problems = outside_refs(step.output_schema)
            issues.extend(SpecIssue(p, step.id, "output_schema") for p in problems)
        if isinstance(step, LoopStep):
            body = _steps_issues(
                step.steps, inputs, frozenset(step.depends_on), True, output_schema_refs
            )
            issues.extend(_nested(step.id, body))
        if isinstance(step, PipelineStep):
            issues.extend(_pipeline_step_issues(step, output_schema_refs))

    graph = {step.id: [d for d in step.depends_on if d != step.id] for step in steps}
    cycle = find_cycle(graph)
    if cycle:
        issues.append(SpecIssue("dependency cycle: " + " -> ".join(cycle), cycle[0], "depends_on"))
    return issues


def _plan_step_issues(step: PlanStep) -> list[SpecIssue]:
    """What a plan may use, and its approval: checks that need no tool registry."""
    allow = step.allow
    issues = []
    if not allow.kinds:
        issues.append(SpecIssue("a plan needs at least one step kind", step.id, "allow.kinds"))
    elif set(allow.kinds) == {"tool"} and not allow.tools:
        issues.append(
            SpecIssue("a plan of tool steps only needs tools to call", step.id, "allow.tools")
        )
    listed: tuple[tuple[str, list[str]], ...] = (
        ("allow.tools", list(allow.tools)),
        ("allow.kinds", [str(kind) for kind in allow.kinds]),
        ("allow.models", list(allow.models)),
    )
    for field, names in listed:
        for name in [n for n in dict.fromkeys(names) if names.count(n) > 1]:
            issues.append(SpecIssue(f"{name!r} is listed twice", step.id, field))
    for index, name in enumerate(allow.models):
        if not name.strip():
            issues.append(
                SpecIssue("a model name cannot be empty", step.id, f"allow.models[{index}]")
            )
    approval = step.approve
    if (
        isinstance(approval, PlanApproval)
        and not approval.timeout
        and approval.on_timeout in _DECIDES
    ):
        issues.append(SpecIssue("has no effect without a timeout", step.id, "approve.on_timeout"))
    return issues


def _nested(prefix: str, issues: list[SpecIssue]) -> list[SpecIssue]:
    """Issues of a loop's body or a sub-pipeline, named by the path to their step."""
    return [
        SpecIssue(i.message, f"{prefix}.{i.step}" if i.step else prefix, i.field) for i in issues
    ]


def _pipeline_step_issues(step: PipelineStep, output_schema_refs: bool) -> list[SpecIssue]:
    """A sub-pipeline: one of `pipeline` or `steps`; its own checks; inputs it declares."""
    if (step.pipeline is None) == (step.steps is None):
        return [SpecIssue("give either `pipeline` (a file) or `steps`", step.id, "pipeline")]
    if isinstance(step.pipeline, str):
        return [
            SpecIssue(
                f"the file {step.pipeline!r} was not read: start the run with `stepflow run` "
                "or StepflowClient, which read it",
                step.id,
                "pipeline",
            )
        ]
    if step.steps is not None:
        body = _steps_issues(step.steps, set(step.inputs), frozenset(), False, output_schema_refs)
        return _nested(step.id, body)
    assert step.pipeline is not None
    child = step.pipeline
    issues = _nested(step.id, structural_issues(child, output_schema_refs=output_schema_refs))
    for name in step.inputs:
        if name not in child.inputs:
            hint = did_you_mean(name, child.inputs)
            issues.append(
                SpecIssue(
                    f"pipeline {child.name!r} declares no input {name!r}{hint}",
                    step.id,
                    f"inputs.{name}",
                )
            )
    for name, decl in child.inputs.items():
        if decl.required and name not in step.inputs:
            issues.append(
                SpecIssue(
                    f"pipeline {child.name!r} needs input {name!r}", step.id, f"inputs.{name}"
                )
            )
    return issues


def templated_fields(step: Step) -> list[tuple[str, Any]]:
    """The fields of a step that may hold {{ ... }} references, by the name errors use."""
    fields: list[tuple[str, Any]] = []
    for_each = getattr(step, "for_each", None)
    if for_each is not None:
        fields.append(("for_each", for_each))
    if isinstance(step, PlanStep) and isinstance(step.approve, PlanApproval):
        fields.append(("approve.message", step.approve.message))
    if isinstance(step, AgentStep | PlanStep):
        return [*fields, ("instructions", step.instructions), ("input", step.input)]
    if isinstance(step, ToolStep):
        return [*fields, *((f"args.{key}", value) for key, value in step.args.items())]
    if isinstance(step, PipelineStep):
        return [*fields, *((f"inputs.{key}", value) for key, value in step.inputs.items())]
    if isinstance(step, LoopStep):
        return fields
    return [*fields, ("message", step.message)]


def _reference_issues(
    inputs: set[str],
    step_id: str | None,
    depends_on: list[str],
    field: str,
    value: Any,
    scopes: frozenset[str],
) -> list[SpecIssue]:
    issues = []
    try:
        references = list(iter_references(value))
    except TemplateError as err:
        return [SpecIssue(str(err), step_id, field)]
    for ref in references:
        if ref.root == "inputs" and ref.name not in inputs:
            hint = did_you_mean(ref.name, inputs)
            issues.append(
                SpecIssue(f"{{{{ {ref.text} }}}} names no declared input{hint}", step_id, field)
            )
        elif ref.root == "steps" and ref.name not in depends_on:
            if step_id is None:
                issues.append(SpecIssue(f"{{{{ {ref.text} }}}} names no step", step_id, field))
                continue
            issues.append(
                SpecIssue(
                    f"{{{{ {ref.text} }}}} uses step {ref.name!r}, which is not in depends_on: "
                    "a step sees only the outputs of the steps it depends on",
                    step_id,
                    field,
                )
            )
        elif ref.root in SCOPED and (ref.root not in scopes or field == "for_each"):
            issues.append(
                SpecIssue(
                    f"{{{{ {ref.text} }}}}: {ref.root!r} exists only inside {SCOPED[ref.root]}",
                    step_id,
                    field,
                )
            )
    return issues


_INPUT_TYPES: dict[InputType, TypeAdapter[Any]] = {
    "string": TypeAdapter(str),
    "integer": TypeAdapter(int),
    "number": TypeAdapter(float),
    "boolean": TypeAdapter(bool),
    "object": TypeAdapter(dict[str, Any]),
    "array": TypeAdapter(list[Any]),
    "any": TypeAdapter(Any),
}


def input_type_problem(kind: InputType, value: Any) -> str | None:
    """What is wrong with `value` for an input of type `kind` (`expected integer: ...`), or None."""
    try:
        _INPUT_TYPES[kind].validate_python(value)
    except ValidationError as err:
        return f"expected {kind}: {err.errors()[0]['msg']}"
    return None


def resolve_inputs(spec: PipelineSpec, given: dict[str, Any]) -> dict[str, Any]:
    """The run's input values: given ones checked against their declared types, defaults filled in.

    Raises:
        SpecError: an unknown input, a missing required one, or a value of the wrong type.
    """
    issues = []
    resolved: dict[str, Any] = {}
    for name in given:
        if name not in spec.inputs:
            hint = did_you_mean(name, spec.inputs)
            issues.append(SpecIssue(f"unknown input {name!r}{hint}", field=f"inputs.{name}"))
    for name, decl in spec.inputs.items():
        if name not in given:
            if decl.required:
                issues.append(SpecIssue("required input is missing", field=f"inputs.{name}"))
            else:
                resolved[name] = decl.default
            continue
        try:
            resolved[name] = _INPUT_TYPES[decl.type].validate_python(given[name])
        except ValidationError:
            problem = input_type_problem(decl.type, given[name])
            issues.append(SpecIssue(problem or f"expected {decl.type}", field=f"inputs.{name}"))
    if issues:
        raise SpecError(issues)
    return resolved


def all_steps(steps: list[Step], prefix: str = "") -> Iterator[tuple[str, Step]]:
    """Every step, those of loop bodies and sub-pipelines too, with its path (`revise.write`)."""
    for step in steps:
        path = f"{prefix}{step.id}"
        yield path, step
        if isinstance(step, LoopStep):
            yield from all_steps(step.steps, f"{path}.")
        elif isinstance(step, PipelineStep):
            inner = step.pipeline.steps if isinstance(step.pipeline, PipelineSpec) else step.steps
            yield from all_steps(inner or [], f"{path}.")


def outside_output_schema_refs(spec: PipelineSpec) -> bool:
    """Whether an agent step's inline `output_schema` has a `$ref` outside it."""
    return any(
        isinstance(step, AgentStep)
        and isinstance(step.output_schema, dict)
        and bool(outside_refs(step.output_schema))
        for _, step in all_steps(spec.steps)
    )


def check_pipeline(
    spec: PipelineSpec,
    given_inputs: dict[str, Any],
    *,
    output_schema_refs: bool = True,
    outside: Collection[str] = (),
    in_loop: bool = False,
) -> dict[str, Any]:
    """Everything that can be checked without the tool registry; returns the resolved inputs."""
    issues = structural_issues(
        spec, output_schema_refs=output_schema_refs, outside=outside, in_loop=in_loop
    )
    try:
        inputs = resolve_inputs(spec, given_inputs)
    except SpecError as err:
        issues.extend(err.issues)
        inputs = {}
    if issues:
        raise SpecError(issues)
    return inputs
