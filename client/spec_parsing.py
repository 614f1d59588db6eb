"""From parsed YAML or JSON to a `PipelineSpec`, or to every problem with it, each named by
the step (by its path: `revise.write`) and the field, as a user reads their file.

pydantic's errors point at list indexes and union members (`steps.3.tool.args`); a user
thinks in step ids and keys. A missing or unknown `kind` gets its own words
(`client.step_kinds`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from stepflow.client.step_kinds import kind_message
from stepflow.workflows.models import PipelineSpec
from stepflow.workflows.validation import SpecError, SpecIssue


def issues_from_validation_error(err: ValidationError, raw: Any) -> list[SpecIssue]:
    """pydantic's errors, located by step path (not list index) and dotted field.

    A step inside a loop's body or an inline sub-pipeline is named by its path
    (`revise.write`), as the other checks name it.
    """
    issues = []
    for error in err.errors():
        step, loc, raw_step = _locate(list(error["loc"]), raw)
        if loc == ["pipeline", "str"] and isinstance(raw_step.get("pipeline"), dict):
            continue  # `pipeline:` given inline: that it is no file name goes without saying
        loc = [part for part in loc if part not in ("str", "PipelineSpec")]  # union members
        message = str(error["msg"]).removeprefix("Value error, ")  # pydantic's, not ours
        if error["type"] == "extra_forbidden":
            message = "unknown key (a typo?)"
        message = kind_message(error, raw_step) or message
        field = ".".join(str(part) for part in loc)
        issues.append(SpecIssue(message, step, field or None))
    return list(dict.fromkeys(issues))


def _locate(loc: list[Any], raw: Any) -> tuple[str | None, list[Any], dict[str, Any]]:
    """Where an error is: the path of its step (`revise.write`; `#3` for one without an
    id), the rest of pydantic's location (the field), and the step as written."""
    path: list[str] = []
    node = raw
    raw_step: Any = {}
    while len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        index = loc[1]
        raw_steps = node.get("steps") if isinstance(node, dict) else None
        raw_step = (
            raw_steps[index] if isinstance(raw_steps, list) and index < len(raw_steps) else {}
        )
        loc = loc[2:]
        if not isinstance(raw_step, dict) or not isinstance(raw_step.get("id"), str):
            path.append(f"#{index + 1}")
            raw_step = {}
            break
        path.append(raw_step["id"])
        # pydantic puts the discriminator's value into the path; a reader does not.
        if loc and loc[0] == raw_step.get("kind"):
            loc = loc[1:]
        node = raw_step
        if loc[:2] == ["pipeline", "PipelineSpec"] and loc[2:3] == ["steps"]:
            node, loc = raw_step.get("pipeline"), loc[2:]  # a step of an inline sub-pipeline
    return (".".join(path) if path else None), loc, raw_step


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
