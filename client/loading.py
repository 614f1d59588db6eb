"""Reading a pipeline file and checking it completely before anything starts.

Adds to `workflows.validation` what needs this process's tool registry:
unknown tools and arguments that fail a tool's schema. Every problem comes
back as a `SpecIssue` naming the step and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stepflow.activities.output_schema import OutputSchemaError, UnsafeSchema, resolve_output_schema
from stepflow.activities.registry import all_tools, get_tool, load_tool_modules
from stepflow.client.yaml_reader import YamlProblem, read_yaml_file
from stepflow.runtime.settings import get_settings
from stepflow.workflows.durations import format_duration
from stepflow.workflows.models import (
    BUILTIN_RETRY,
    OFFLINE_MODEL,
    AgentStep,
    PipelineSpec,
    RetrySpec,
    ToolStep,
    effective_retry,
    model_call_retry,
    tool_call_retry,
)
from stepflow.workflows.templates import stray_braces
from stepflow.workflows.validation import (
    SpecError,
    SpecIssue,
    did_you_mean,
    input_type_problem,
    structural_issues,
    templated_fields,
)


def issues_from_validation_error(err: ValidationError, raw: Any) -> list[SpecIssue]:
    """pydantic's errors, located by step id (not list index) and dotted field."""
    issues = []
    for error in err.errors():
        loc = list(error["loc"])
        step = None
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            index = loc[1]
            step = f"#{index + 1}"
            raw_steps = raw.get("steps") if isinstance(raw, dict) else None
            if isinstance(raw_steps, list) and index < len(raw_steps):
                raw_step = raw_steps[index]
                if isinstance(raw_step, dict) and isinstance(raw_step.get("id"), str):
                    step = raw_step["id"]
                    # pydantic puts the discriminator's value into the path; a reader does not.
                    if len(loc) > 2 and loc[2] == raw_step.get("kind"):
                        del loc[2]
            loc = loc[2:]
        message = str(error["msg"]).removeprefix("Value error, ")  # pydantic's, not ours
        if error["type"] == "extra_forbidden":
            message = "unknown key (a typo?)"
        field = ".".join(str(part) for part in loc)
        issues.append(SpecIssue(message, step, field or None))
    return issues


def parse_spec(raw: Any) -> PipelineSpec:
    """A `PipelineSpec` from parsed YAML/JSON data.

    Raises:
        SpecError: every schema problem, located by step and field.
    """
    if not isinstance(raw, dict):
        raise SpecError([SpecIssue("a pipeline file must be a mapping with `name` and `steps`")])
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(issues_from_validation_error(err, raw)) from None


def load_spec_file(path: str | Path) -> PipelineSpec:
    """Read and parse a YAML (or JSON) pipeline file.

    Raises:
        SpecError: the file is missing, is not YAML, or does not describe a pipeline.
    """
    path = Path(path)
    try:
        raw = read_yaml_file(path)
    except OSError as err:
        raise SpecError([SpecIssue(f"cannot read {path}: {err.strerror}")]) from None
    except YamlProblem as err:
        raise SpecError([SpecIssue(f"{path} {err}")]) from None
    return parse_spec(raw)


def tool_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """Unknown tools and literal arguments that fail the tool's schema."""
    load_tool_modules(get_settings().tool_modules)
    issues = []
    known = [t.name for t in all_tools()]
    for step in spec.steps:
        if isinstance(step, AgentStep):
            issues.extend(_agent_issues(step, known))
            continue
        if not isinstance(step, ToolStep):
            continue  # approval and input steps call no tool
        definition = get_tool(step.tool)
        if definition is None:
            hint = did_you_mean(step.tool, [t.name for t in all_tools()])
            issues.append(
                SpecIssue(
                    f"unknown tool {step.tool!r}{hint}; `stepflow tools` lists them, "
                    "STEPFLOW_TOOL_MODULES adds yours",
                    step.id,
                    "tool",
                )
            )
            continue
        for field, message in definition.check_static_args(step.args):
            issues.append(SpecIssue(message, step.id, f"args.{field}"))
    return issues


def _agent_issues(step: AgentStep, known: list[str]) -> list[SpecIssue]:
    """Unknown tools in an agent step's list, and an output schema the worker could not use."""
    issues = []
    for index, name in enumerate(step.tools):
        if get_tool(name) is None:
            hint = did_you_mean(name, known)
            issues.append(SpecIssue(f"unknown tool {name!r}{hint}", step.id, f"tools[{index}]"))
    if step.output_schema is not None:
        try:
            resolve_output_schema(step.output_schema)
        except (OutputSchemaError, UnsafeSchema) as err:
            issues.append(SpecIssue(str(err), step.id, "output_schema"))
    return issues


def template_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """Half-written templates (`{{ steps.a.output }`), which would otherwise pass as plain text."""
    issues = []
    for step in spec.steps:
        for field, value in templated_fields(step):
            for near in stray_braces(value):
                issues.append(
                    SpecIssue(
                        f"an unclosed template near {near!r}: write {{{{ ... }}}}", step.id, field
                    )
                )
    return issues


MAX_ID_LENGTH = 200
"""Step ids and pipeline names become parts of workflow ids (`<name>-<hex>/<step>`), which
Temporal bounds at 1,000 bytes: 200 leaves room for nesting."""


def limit_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """What the models accept but Temporal would refuse when the step is scheduled.

    Checked here, not in the models: a tighter model would stop in-flight runs from
    replaying. Each of these would fail a workflow task, not the step, at run time.
    """
    issues = []
    if len(spec.name) > MAX_ID_LENGTH:
        issues.append(SpecIssue(f"longer than {MAX_ID_LENGTH} characters", field="name"))
    for name, decl in spec.inputs.items():
        if not decl.required and decl.default is not None:
            problem = input_type_problem(decl.type, decl.default)
            if problem:
                issues.append(SpecIssue(f"default: {problem}", field=f"inputs.{name}"))
    for step in spec.steps:
        if len(step.id) > MAX_ID_LENGTH:
            issues.append(
                SpecIssue(f"longer than {MAX_ID_LENGTH} characters", step.id[:40] + "...", "id")
            )
            continue
        retries: list[tuple[str, RetrySpec]] = []
        if isinstance(step, ToolStep):
            retries = [("retry", effective_retry(step, spec.defaults))]
        elif isinstance(step, AgentStep):
            retries = [
                ("model_retry", model_call_retry(step, spec.defaults)),
                ("tool_retry", tool_call_retry(step, spec.defaults)),
            ]
        for field, retry in retries:
            initial = retry.initial_interval or BUILTIN_RETRY.initial_interval
            if retry.max_interval is not None and initial and retry.max_interval < initial:
                issues.append(
                    SpecIssue(
                        f"max_interval ({format_duration(retry.max_interval)}) is shorter than "
                        f"initial_interval ({format_duration(initial)})",
                        step.id,
                        field,
                    )
                )
    return issues


def model_warnings(spec: PipelineSpec) -> list[str]:
    """Model names this process's configuration does not know. Warnings, not errors:
    the workers may be configured differently from the client."""
    settings = get_settings()
    known = {OFFLINE_MODEL, settings.default_model, *settings.models}
    configured = bool(settings.models) or bool(
        os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
    )
    warnings = []
    for step in spec.steps:
        if not isinstance(step, AgentStep) or step.model is None or step.model in known:
            continue
        hint = did_you_mean(step.model, sorted(known))
        if settings.models:
            warnings.append(
                f"step {step.id!r}: model {step.model!r} is not in STEPFLOW_MODELS{hint}; "
                "it goes to the default endpoint under that name"
            )
        elif not configured:
            warnings.append(
                f"step {step.id!r}: model {step.model!r}: no model is configured here "
                "(OPENAI_API_KEY, OPENAI_BASE_URL, STEPFLOW_MODELS): it will answer offline"
            )
    return warnings


def check_spec(spec: PipelineSpec) -> None:
    """Everything checkable before inputs are known.

    Raises:
        SpecError: listing every issue.
    """
    found = structural_issues(spec) + template_issues(spec) + limit_issues(spec) + tool_issues(spec)
    issues = list(dict.fromkeys(found))  # each once
    if issues:
        raise SpecError(issues)


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON Schema of a pipeline file, from the same models that parse it.

    Editors use it to check and complete pipeline files: save `stepflow schema`
    to a file and name it in a `# yaml-language-server: $schema=...` comment.
    """
    schema = PipelineSpec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
