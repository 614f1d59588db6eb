"""Pipeline steps: another pipeline, run as a child pipeline run with inputs of its own.

The child is `<run id>/<step id>` (`<step id>[i]` for a for_each instance). It
sees only its inputs, never its parent's steps; its output is its `outputs`.
"""

from __future__ import annotations

from typing import Any

from stepflow.workflows.errors import ErrorType, StepFailure
from stepflow.workflows.models import InputSpec, PipelineSpec, PipelineStep, StepRecord
from stepflow.workflows.steps.base import StepContext
from stepflow.workflows.steps.children import child_id, outputs_of, run_child


def child_spec(parent: PipelineSpec, step: PipelineStep) -> PipelineSpec | None:
    """The pipeline a step runs: its file's, read by the client, or its inline `steps`.

    None when the spec still holds a path: only the client reads files.
    """
    if isinstance(step.pipeline, PipelineSpec):
        return step.pipeline
    if step.steps is not None:
        return PipelineSpec(
            name=parent.name,
            inputs={name: InputSpec(type="any") for name in step.inputs},
            max_concurrency=parent.max_concurrency,
            context=parent.context,
            defaults=parent.defaults,
            steps=step.steps,
        )
    return None


class SubPipelineRunner:
    async def run(
        self, ctx: StepContext, step: PipelineStep, record: StepRecord, resume: bool
    ) -> Any:
        spec = child_spec(ctx.spec, step)
        if spec is None:  # validation refuses this before the run starts
            raise StepFailure(
                ErrorType.INVALID_PIPELINE, f"pipeline file {step.pipeline!r} was not read"
            )
        inputs = ctx.render(step, step.inputs)
        key = ctx.key(step)
        rerun = ctx.reuse_inside.get(step.id)  # a rerun from a step inside it
        result = await run_child(
            ctx,
            record,
            spec,
            inputs,
            child_id(key),
            f"{key} · pipeline {spec.name}",
            reuse=rerun.reuse if rerun else None,
        )
        return outputs_of(result, spec)
