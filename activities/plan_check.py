"""Plan steps' answers: the schema a planner is given, and the check of the plan it makes.

A plan is a pipeline fragment, `{"steps": [...], "outputs": {...}}`. The schema
comes from the pipeline models (`ToolStep`, `AgentStep`) narrowed by the step's
`allow`: tool steps only of the allowed tools, with each tool's own argument
schema; agent steps whose `tools` are a subset of them and whose `model` is one
of `allow.models`; only the allowed kinds; at most `allow.max_steps` steps.

The check (`PlanSchema.check`, run on the worker inside the model activity, so
the verdict is in history) parses the answer and runs on it what a pipeline file
gets from `stepflow validate` (`client.plan_checks.plan_issues`), plus the
`allow` limits. An invalid plan comes back as a numbered list of what is wrong,
each naming the step and the field: the agent loop sends it to the model as the
repair, and nothing of the plan ever runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from stepflow.activities.output_schema import ResolvedSchema
from stepflow.activities.registry import get_tool
from stepflow.workflows.models import AgentStep, PlanAllow, ToolStep

PLAN_SCHEMA_TITLE = "StepflowPlan"
"""The title of every plan schema: how the offline model knows it is asked for a plan."""

MAX_PLANNED_ID_LENGTH = 64
"""A planned step's id, at most: it becomes part of workflow ids (`<run>/<plan>/plan/<id>`)."""

COMMON_FIELDS = ("id", "description", "depends_on", "when", "trigger", "on_failure")
"""Fields every planned step may set (as a pipeline file's step would)."""
TOOL_FIELDS = ("kind", "tool", "args")
AGENT_FIELDS = (
    "kind",
    "instructions",
    "input",
    "tools",
    "model",
    "output_schema",
    "max_model_calls",
)
PLANNED_FIELDS = {
    "tool": frozenset(COMMON_FIELDS + TOOL_FIELDS),
    "agent": frozenset(COMMON_FIELDS + AGENT_FIELDS),
}
"""What a plan's step may set, by kind: retries, timeouts, caches and budgets are the
pipeline's to decide (its `defaults` apply), not the planner's."""

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)
"""Models like to wrap JSON in a code fence (as `output_schema` allows too)."""

TEMPLATE_STRING: dict[str, Any] = {
    "type": "string",
    "pattern": r"\{\{.*\}\}",
    "description": "A {{ ... }} template ({{ inputs.request }}, {{ steps.ID.output }}), "
    "replaced by what it names when the step runs.",
}


@dataclass(frozen=True)
class PlanSchema(ResolvedSchema):
    """A plan schema: `check` parses the answer and validates it as a pipeline within `allow`."""

    allow: PlanAllow = field(default_factory=PlanAllow)

    def _check(self, answer: str | None) -> tuple[Any, str | None]:
        try:
            text = answer or ""
            fenced = _FENCE.match(text)
            plan = json.loads(fenced.group(1) if fenced else text)
        except json.JSONDecodeError as err:
            return None, f"1. the answer is not valid JSON: {err}"
        # Imported here: `client.plan_checks` imports this module, and the client's checks
        # (templates, limits) that only a plan's model call needs.
        from stepflow.client.plan_checks import plan_issues

        issues = plan_issues(plan, self.allow)
        if issues:
            return None, numbered([str(issue) for issue in issues])
        assert isinstance(plan, dict)
        return {key: plan[key] for key in ("steps", "outputs") if key in plan}, None


MAX_ERRORS_SHOWN = 20
"""Errors a repair lists, at most: a plan wrong everywhere needs rethinking, not a long list."""


def numbered(problems: list[str]) -> str:
    """`1. ...\\n2. ...`: the errors a model reads and fixes one by one."""
    shown = [f"{n}. {p}" for n, p in enumerate(problems[:MAX_ERRORS_SHOWN], start=1)]
    if len(problems) > MAX_ERRORS_SHOWN:
        shown.append(f"... and {len(problems) - MAX_ERRORS_SHOWN} more")
    return "\n".join(shown)


def plan_output_schema(allow: PlanAllow) -> ResolvedSchema:
    """The plan's JSON schema narrowed by `allow`; its `check` also validates the plan."""
    return PlanSchema(json_schema=plan_json_schema(allow), allow=allow)


def plan_json_schema(allow: PlanAllow) -> dict[str, Any]:
    """The JSON schema of a plan within `allow`.

    Built afresh for each call (about 7 ms): an MCP server's tools may have changed.
    """
    defs: dict[str, Any] = {}
    variants: list[dict[str, Any]] = []
    tool_common, tool_defs = _fields(ToolStep, COMMON_FIELDS)
    agent_common, agent_defs = _fields(AgentStep, COMMON_FIELDS + AGENT_FIELDS)
    if "tool" in allow.kinds:
        defs.update(tool_defs)
        variants.extend(_tool_variant(name, tool_common, defs) for name in allow.tools)
    if "agent" in allow.kinds:
        defs.update(agent_defs)
        variants.append(_agent_variant(allow, agent_common))
    schema: dict[str, Any] = {
        "title": PLAN_SCHEMA_TITLE,
        "description": (
            "A plan: the steps of a pipeline that does what was asked, and what it returns. "
            "The request is {{ inputs.request }}; a step reads the outputs of the steps in its "
            "depends_on as {{ steps.ID.output }}."
        ),
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": allow.max_steps,
                "items": {"anyOf": variants} if variants else False,
                "description": f"At most {allow.max_steps} steps; each starts once the steps "
                "in its depends_on have succeeded.",
            },
            "outputs": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "What the plan returns, by name: templates such as "
                '"{{ steps.ID.output }}". Absent: every step\'s output, by step id.',
            },
        },
        "required": ["steps"],
        "additionalProperties": False,
    }
    used = _refs(schema) | _refs(defs)
    defs = {name: value for name, value in defs.items() if f"#/$defs/{name}" in used}
    if defs:
        schema["$defs"] = defs
    return schema


def _refs(schema: Any) -> set[str]:
    """Every `$ref` in `schema`."""
    if isinstance(schema, dict):
        found = {schema["$ref"]} if isinstance(schema.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_refs(v) for v in schema))
    return set()


def _fields(model: type[Any], names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's own schemas of `names`, as references into `$defs` (`step__<name>`, so
    each is written once however many variants use it), and those `$defs`."""
    full = model.model_json_schema()
    prefix = "step__"
    defs = {f"{prefix}{k}": _renamed_refs(v, prefix) for k, v in full.get("$defs", {}).items()}
    properties: dict[str, Any] = {}
    for name in names:
        if name not in full["properties"]:
            continue
        schema = {k: v for k, v in full["properties"][name].items() if k != "title"}
        if name == "id":
            schema["maxLength"] = MAX_PLANNED_ID_LENGTH
        defs[f"{prefix}{name}"] = _renamed_refs(schema, prefix)
        properties[name] = {"$ref": f"#/$defs/{prefix}{name}"}
    return properties, defs


def _renamed_refs(schema: Any, prefix: str) -> Any:
    """`schema` with each `#/$defs/X` now `#/$defs/<prefix>X` (defs of many sources in one)."""
    if isinstance(schema, dict):
        renamed = {k: _renamed_refs(v, prefix) for k, v in schema.items()}
        ref = renamed.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            renamed["$ref"] = "#/$defs/" + prefix + ref.removeprefix("#/$defs/")
        return renamed
    if isinstance(schema, list):
        return [_renamed_refs(item, prefix) for item in schema]
    return schema


def _tool_variant(name: str, common: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A tool step calling `name`, its `args` as the tool's own schema (templates allowed)."""
    definition = get_tool(name)
    args: dict[str, Any] = {"type": "object"}
    required = ["id", "kind", "tool"]
    if definition is not None:
        prefix = f"{name.replace('.', '_')}__"
        tool_schema = _renamed_refs(definition.json_schema(), prefix)
        defs.update({f"{prefix}{k}": v for k, v in tool_schema.pop("$defs", {}).items()})
        args = _templates_allowed(tool_schema)
        if args.get("required"):
            required.append("args")
        description = definition.description.split("\n\n")[0]
    else:  # not on this worker: the check says so, should the model use it
        description = "a tool this worker does not have"
    return {
        "type": "object",
        "title": f"tool step: {name}",
        "description": f"Calls the tool {name!r}: {description}",
        "properties": {
            **common,
            "kind": {"const": "tool"},
            "tool": {"const": name},
            "args": args,
        },
        "required": required,
        "additionalProperties": False,
    }


def _templates_allowed(args: dict[str, Any]) -> dict[str, Any]:
    """Each argument may also be a template, known only when the step runs."""
    properties = args.get("properties")
    if not isinstance(properties, dict):
        return args
    wrapped = {}
    for key, value in properties.items():
        plain_string = isinstance(value, dict) and value.get("type") == "string"
        wrapped[key] = value if plain_string else {"anyOf": [value, TEMPLATE_STRING]}
    return {**args, "properties": wrapped}


def _agent_variant(allow: PlanAllow, common: dict[str, Any]) -> dict[str, Any]:
    """An agent step whose tools are of `allow.tools` and whose model is of `allow.models`."""
    properties = dict(common)
    properties["kind"] = {"const": "agent"}
    properties["tools"] = {
        "type": "array",
        "items": {"enum": list(allow.tools)} if allow.tools else False,
        "uniqueItems": True,
        "description": "The tools the step may call, of: " + (", ".join(allow.tools) or "none"),
    }
    if allow.models:
        properties["model"] = {
            "enum": list(allow.models),
            "description": "The model; absent: the worker's default.",
        }
    else:
        properties.pop("model", None)
    properties["output_schema"] = {
        "type": "object",
        "description": "The JSON schema the step's final answer must match; absent: text.",
    }
    return {
        "type": "object",
        "title": "agent step",
        "description": "A conversation with a model, which may call its tools.",
        "properties": properties,
        "required": ["id", "kind", "instructions"],
        "additionalProperties": False,
    }
