"""Small builders that keep the tests reading like the pipelines they run."""

from __future__ import annotations

from typing import Any

from stepflow.workflows.models import PipelineSpec


def pipeline(*steps: dict[str, Any], **fields: Any) -> PipelineSpec:
    """A spec from step dicts: `pipeline(step("a", "echo"), max_concurrency=2)`."""
    return PipelineSpec.model_validate(
        {"name": fields.pop("name", "test"), "steps": list(steps), **fields}
    )


def step(step_id: str, tool: str, **fields: Any) -> dict[str, Any]:
    """A tool step as a dict; `args=`, `depends_on=`, `retry=` ... go in as written in YAML."""
    return {"id": step_id, "kind": "tool", "tool": tool, **fields}


def agent(
    step_id: str, instructions: str = "You are a careful test agent.", **fields: Any
) -> dict[str, Any]:
    """An agent step as a dict; `tools=`, `input=`, `output_schema=` ... go in as in YAML."""
    return {"id": step_id, "kind": "agent", "instructions": instructions, **fields}
