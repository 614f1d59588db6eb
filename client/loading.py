"""Reading a pipeline file and checking it completely before anything starts.

Adds to `workflows.validation` what needs this process's tool registry:
unknown tools and arguments that fail a tool's schema. Every problem comes
back as a `SpecIssue` naming the step and the field.

The file's data becomes a spec in `client.spec_parsing`; the sub-pipeline files
it names are read in `client.sub_pipelines`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stepflow.activities.output_schema import OutputSchemaError, UnsafeSchema, resolve_output_schema
from stepflow.activities.registry import all_tools, get_tool, load_tool_modules
from stepflow.client.budget_checks import budget_issues
from stepflow.client.model_checks import chain_issues, chain_model_warnings
from stepflow.client.spec_parsing import (
    issues_from_validation_error as issues_from_validation_error,
)
from stepflow.client.spec_parsing import parse_spec as parse_spec
from stepflow.client.sub_pipelines import resolve_files_named_in
from stepflow.client.sub_pipelines import resolve_pipeline_files as resolve_pipeline_files
from stepflow.client.yaml_reader import YamlProblem, read_yaml_file
from stepflow.runtime.mcp_config import servers_of, tool_server, unknown_server_hint
from stepflow.runtime.settings import get_settings
from stepflow.workflows.durations import format_duration
from stepflow.workflows.models import (
    BUILTIN_RETRY,
    OFFLINE_MODEL,
    AgentStep,
    LoopStep,
    PipelineSpec,
    PipelineStep,
    RetrySpec,
    Step,
    StepDefaults,
    ToolStep,
    effective_retry,
    model_call_retry,
    tool_call_retry,
)
from stepflow.workflows.templates import stray_braces
from stepflow.workflows.validation import (
    SpecError,
    SpecIssue,
    all_steps,
    did_you_mean,
    input_type_problem,
    structural_issues,
    templated_fields,
)


def load_spec_file(path: str | Path) -> PipelineSpec:
    """Read and parse a YAML (or JSON) pipeline file, and the sub-pipeline files it names.

    Each `pipeline: FILE` is read relative to the file that names it (recursively:
    a sub-pipeline's own and those in loop bodies too) and put in the spec inline.

    Raises:
        SpecError: the file is missing, is not YAML, or does not describe a pipeline;
            or a sub-pipeline file is missing, invalid, or names back a file naming it.
    """
    path = Path(path)
    try:
        raw = read_yaml_file(path)
    except OSError as err:
        raise SpecError([SpecIssue(f"cannot read {path}: {err.strerror}")]) from None
    except YamlProblem as err:
        raise SpecError([SpecIssue(f"{path} {err}")]) from None
    return resolve_files_named_in(parse_spec(raw), str(path))


def tool_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """Unknown tools and literal arguments that fail the tool's schema, nested steps too.

    MCP servers' tools (`server.tool`) are read from the servers the pipeline names; a
    server that cannot be read is one issue naming it, not one per step that uses it.
    """
    load_tool_modules(get_settings().tool_modules)
    steps = list(all_steps(spec.steps))
    unread, read = _mcp_tools(steps)
    issues = [SpecIssue(problem) for problem in unread.values()]
    known = [t.name for t in all_tools()] + read
    for path, step in steps:
        if isinstance(step, AgentStep):
            issues.extend(_agent_issues(path, step, known, set(unread)))
            continue
        if not isinstance(step, ToolStep):
            continue  # approval, input, loop and pipeline steps call no tool themselves
        definition = get_tool(step.tool)
        if definition is None:
            if tool_server(step.tool) in unread:
                continue  # said once, for its server
            hint = did_you_mean(step.tool, known) or unknown_server_hint(
                step.tool, get_settings().mcp_servers
            )
            issues.append(
                SpecIssue(
                    f"unknown tool {step.tool!r}{hint}; `stepflow tools` lists them, "
                    "STEPFLOW_TOOL_MODULES adds yours",
                    path,
                    "tool",
                )
            )
            continue
        for field, message in definition.check_static_args(step.args):
            issues.append(SpecIssue(message, path, f"args.{field}"))
    return issues


def _mcp_tools(steps: list[tuple[str, Step]]) -> tuple[dict[str, str], list[str]]:
    """Read the tools of the MCP servers the steps name: why each server that could not be
    read could not (by server), and the names of the tools read."""
    names = [step.tool for _, step in steps if isinstance(step, ToolStep)]
    names += [name for _, step in steps if isinstance(step, AgentStep) for name in step.tools]
    servers = servers_of(names)
    if not servers & set(get_settings().mcp_servers):
        return {}, []
    # Imported here: the MCP SDK takes a while to import, and most pipelines need none.
    from stepflow.activities.mcp.discovery import load_mcp_tools

    listing = load_mcp_tools(servers)
    return listing.problems, [defn.name for defn in listing.tools]


def _agent_issues(
    path: str, step: AgentStep, known: list[str], unread: set[str]
) -> list[SpecIssue]:
    """Unknown tools in an agent step's list, and an output schema the worker could not use."""
    issues = []
    for index, name in enumerate(step.tools):
        if get_tool(name) is None and tool_server(name) not in unread:
            hint = did_you_mean(name, known) or unknown_server_hint(
                name, get_settings().mcp_servers
            )
            issues.append(SpecIssue(f"unknown tool {name!r}{hint}", path, f"tools[{index}]"))
    if step.output_schema is not None:
        try:
            resolve_output_schema(step.output_schema)
        except (OutputSchemaError, UnsafeSchema) as err:
            issues.append(SpecIssue(str(err), path, "output_schema"))
    return issues


def template_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """Half-written templates (`{{ steps.a.output }`), which would otherwise pass as plain text."""
    fields: list[tuple[str | None, str, Any]] = [
        (None, f"outputs.{name}", value) for name, value in (spec.outputs or {}).items()
    ]
    for path, step in all_steps(spec.steps):
        fields.extend((path, field, value) for field, value in templated_fields(step))
        if isinstance(step, PipelineStep) and isinstance(step.pipeline, PipelineSpec):
            outputs = step.pipeline.outputs or {}
            fields.extend((path, f"pipeline.outputs.{n}", v) for n, v in outputs.items())
    return [
        SpecIssue(f"an unclosed template near {near!r}: write {{{{ ... }}}}", path, field)
        for path, field, value in fields
        for near in stray_braces(value)
    ]


MAX_ID_LENGTH = 200
"""Step ids and pipeline names become parts of workflow ids (`<name>-<hex>/<step>`), which
Temporal bounds at 1,000 bytes: 200 leaves room for nesting."""

MAX_WORKFLOW_ID_BYTES = 1000
"""Temporal's default bound on a workflow id; a nested step's is `<run id>/<loop>/<n>/<step>`."""

NESTING_ID_BYTES = 10
"""What a level of nesting adds to a workflow id besides the step's id (`/`, `/12`, `[345]`)."""


def _scoped_steps(
    steps: list[Step], defaults: StepDefaults, prefix: str = ""
) -> Iterator[tuple[str, Step, StepDefaults]]:
    """Every step with its path and the defaults it runs with: a loop's body and inline
    `steps:` run with their run's, a sub-pipeline spec with its own."""
    for step in steps:
        path = f"{prefix}{step.id}"
        yield path, step, defaults
        if isinstance(step, LoopStep):
            yield from _scoped_steps(step.steps, defaults, f"{path}.")
        elif isinstance(step, PipelineStep):
            if isinstance(step.pipeline, PipelineSpec):
                yield from _scoped_steps(step.pipeline.steps, step.pipeline.defaults, f"{path}.")
            elif step.steps is not None:
                yield from _scoped_steps(step.steps, defaults, f"{path}.")


def _input_default_issues(
    spec: PipelineSpec, step: str | None = None, field: str = "inputs"
) -> list[SpecIssue]:
    issues = []
    for name, decl in spec.inputs.items():
        if not decl.required and decl.default is not None:
            problem = input_type_problem(decl.type, decl.default)
            if problem:
                issues.append(SpecIssue(f"default: {problem}", step, f"{field}.{name}"))
    return issues


def limit_issues(spec: PipelineSpec) -> list[SpecIssue]:
    """What the models accept but Temporal would refuse when the step is scheduled.

    Checked here, not in the models: a tighter model would stop in-flight runs from
    replaying. Each of these would fail a workflow task, not the step, at run time.
    """
    issues = []
    if len(spec.name) > MAX_ID_LENGTH:
        issues.append(SpecIssue(f"longer than {MAX_ID_LENGTH} characters", field="name"))
    issues.extend(_input_default_issues(spec))
    run_id_bytes = len(spec.name.encode()) + 9  # `<name>-<8 hex digits>`
    for path, step, defaults in _scoped_steps(spec.steps, spec.defaults):
        if len(step.id) > MAX_ID_LENGTH:
            shown = path if len(path) <= 60 else "..." + path[-40:]
            issues.append(SpecIssue(f"longer than {MAX_ID_LENGTH} characters", shown, "id"))
            continue
        levels = path.split(".")
        if len(levels) > 1:
            id_bytes = run_id_bytes + sum(len(p.encode()) + NESTING_ID_BYTES for p in levels)
            if id_bytes > MAX_WORKFLOW_ID_BYTES:
                issues.append(
                    SpecIssue(
                        f"nested too deep: its workflow id would pass Temporal's "
                        f"{MAX_WORKFLOW_ID_BYTES:,}-byte limit (use shorter step ids)",
                        path,
                        "id",
                    )
                )
        if isinstance(step, PipelineStep) and isinstance(step.pipeline, PipelineSpec):
            issues.extend(_input_default_issues(step.pipeline, path, "pipeline.inputs"))
        retries: list[tuple[str, RetrySpec]] = []
        if isinstance(step, ToolStep):
            retries = [("retry", effective_retry(step, defaults))]
        elif isinstance(step, AgentStep):
            retries = [
                ("model_retry", model_call_retry(step, defaults)),
                ("tool_retry", tool_call_retry(step, defaults)),
            ]
        for field, retry in retries:
            initial = retry.initial_interval or BUILTIN_RETRY.initial_interval
            if retry.max_interval is not None and initial and retry.max_interval < initial:
                issues.append(
                    SpecIssue(
                        f"max_interval ({format_duration(retry.max_interval)}) is shorter than "
                        f"initial_interval ({format_duration(initial)})",
                        path,
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
    for path, step in all_steps(spec.steps):
        if not isinstance(step, AgentStep) or not isinstance(step.model, str):
            continue  # chains: `chain_model_warnings`
        if step.model in known:
            continue
        hint = did_you_mean(step.model, sorted(known))
        if settings.models:
            warnings.append(
                f"step {path!r}: model {step.model!r} is not in STEPFLOW_MODELS{hint}; "
                "it goes to the default endpoint under that name"
            )
        elif not configured:
            warnings.append(
                f"step {path!r}: model {step.model!r}: no model is configured here "
                "(OPENAI_API_KEY, OPENAI_BASE_URL, STEPFLOW_MODELS): it will answer offline"
            )
    return list(dict.fromkeys(warnings + chain_model_warnings(spec)))


def check_spec(spec: PipelineSpec) -> None:
    """Everything checkable before inputs are known.

    Raises:
        SpecError: listing every issue.
    """
    # Plan checks are built on this module's tool checks: imported here, not at the top.
    from stepflow.client.plan_checks import plan_step_issues

    found = (
        structural_issues(spec)
        + template_issues(spec)
        + limit_issues(spec)
        + tool_issues(spec)
        + chain_issues(spec)
        + budget_issues(spec)
        + plan_step_issues(spec)
    )
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
