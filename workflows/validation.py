"""Checks of a pipeline that need no tool registry: ids, dependencies, cycles, references, inputs.

The client runs these (plus the tool checks in `client.loading`) before
anything starts; the workflow runs them again on its input, so a run started
some other way (a script, the `temporal` CLI) fails at once instead of
half-way. Pure functions: imported in the workflow sandbox.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from stepflow.workflows.json_schemas import check_schema, outside_refs
from stepflow.workflows.models import (
    AgentStep,
    ApprovalStep,
    InputStep,
    InputType,
    PipelineSpec,
    Step,
    ToolStep,
)
from stepflow.workflows.templates import TemplateError, iter_references

MAX_ISSUE_LENGTH = 500
"""An issue is a line a person reads, whatever the file quoted into it."""


@dataclass(frozen=True)
class SpecIssue:
    """One thing wrong with a pipeline, located by step and field."""

    message: str
    step: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = []
        if self.step is not None:
            step = self.step if len(self.step) <= 60 else self.step[:40] + "..."
            where.append(f"step {step!r}")
        if self.field:
            where.append(self.field)
        text = f"{': '.join(where)}: {self.message}" if where else self.message
        if len(text) > MAX_ISSUE_LENGTH:  # a message quoting a value from a huge file
            cut = len(text) - MAX_ISSUE_LENGTH
            text = f"{text[:MAX_ISSUE_LENGTH]}... ({cut:,} more characters)"
        return text


class SpecError(ValueError):
    """A pipeline (or its inputs) that cannot run. Lists every issue found, not just the first."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


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


def structural_issues(spec: PipelineSpec, *, output_schema_refs: bool = True) -> list[SpecIssue]:
    """Duplicate ids, unknown or self dependencies, cycles, and references to undeclared things.

    Args:
        output_schema_refs: refuse an `output_schema` whose `$ref` points outside it. Off only
            for runs that started before the workflow refused them (they replay as they ran).
    """
    issues: list[SpecIssue] = []
    seen: set[str] = set()
    for step in spec.steps:
        if step.id in seen:
            issues.append(SpecIssue("duplicate step id", step.id, "id"))
        seen.add(step.id)

    for step in spec.steps:
        for dep in step.depends_on:
            if dep == step.id:
                issues.append(SpecIssue("a step cannot depend on itself", step.id, "depends_on"))
            elif dep not in seen:
                hint = did_you_mean(dep, seen)
                issues.append(SpecIssue(f"unknown step {dep!r}{hint}", step.id, "depends_on"))
        for field, value in templated_fields(step):
            issues.extend(_reference_issues(spec, step.id, step.depends_on, field, value))
        if isinstance(step, AgentStep):
            for tool in [t for t in dict.fromkeys(step.tools) if step.tools.count(t) > 1]:
                issues.append(SpecIssue(f"tool {tool!r} is listed twice", step.id, "tools"))
        # `fail` is what happens anyway (and what runs recorded before it was optional carry).
        if isinstance(step, ApprovalStep) and not step.timeout and step.on_timeout in _DECIDES:
            issues.append(SpecIssue("has no effect without a timeout", step.id, "on_timeout"))
        if isinstance(step, InputStep):
            issues.extend(SpecIssue(p, step.id, "schema") for p in check_schema(step.value_schema))
        # The rest of an output schema is checked where it is used (activities.output_schema);
        # a reference outside it would be fetched by whoever checks it, so it never gets there.
        if (
            output_schema_refs
            and isinstance(step, AgentStep)
            and isinstance(step.output_schema, dict)
        ):
            problems = outside_refs(step.output_schema)
            issues.extend(SpecIssue(p, step.id, "output_schema") for p in problems)

    graph = {step.id: [d for d in step.depends_on if d != step.id] for step in spec.steps}
    cycle = find_cycle(graph)
    if cycle:
        issues.append(SpecIssue("dependency cycle: " + " -> ".join(cycle), cycle[0], "depends_on"))
    return issues


def templated_fields(step: Step) -> list[tuple[str, Any]]:
    """The fields of a step that may hold {{ ... }} references, by the name errors use."""
    if isinstance(step, AgentStep):
        return [("instructions", step.instructions), ("input", step.input)]
    if isinstance(step, ToolStep):
        return [(f"args.{key}", value) for key, value in step.args.items()]
    return [("message", step.message)]


def _reference_issues(
    spec: PipelineSpec, step_id: str, depends_on: list[str], field: str, value: Any
) -> list[SpecIssue]:
    issues = []
    try:
        references = list(iter_references(value))
    except TemplateError as err:
        return [SpecIssue(str(err), step_id, field)]
    for ref in references:
        if ref.root == "inputs" and ref.name not in spec.inputs:
            hint = did_you_mean(ref.name, spec.inputs)
            issues.append(
                SpecIssue(f"{{{{ {ref.text} }}}} names no declared input{hint}", step_id, field)
            )
        elif ref.root == "steps" and ref.name not in depends_on:
            issues.append(
                SpecIssue(
                    f"{{{{ {ref.text} }}}} uses step {ref.name!r}, which is not in depends_on: "
                    "a step sees only the outputs of the steps it depends on",
                    step_id,
                    field,
                )
            )
    return issues


def did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def outside_output_schema_refs(spec: PipelineSpec) -> bool:
    """Whether an agent step's inline `output_schema` has a `$ref` outside it."""
    return any(
        isinstance(step, AgentStep)
        and isinstance(step.output_schema, dict)
        and bool(outside_refs(step.output_schema))
        for step in spec.steps
    )


def check_pipeline(
    spec: PipelineSpec, given_inputs: dict[str, Any], *, output_schema_refs: bool = True
) -> dict[str, Any]:
    """Everything that can be checked without the tool registry; returns the resolved inputs."""
    issues = structural_issues(spec, output_schema_refs=output_schema_refs)
    try:
        inputs = resolve_inputs(spec, given_inputs)
    except SpecError as err:
        issues.extend(err.issues)
        inputs = {}
    if issues:
        raise SpecError(issues)
    return inputs
