"""Loop steps: the body runs once per iteration, each a child pipeline run, until `until`.

Iteration n is the child `<run id>/<loop id>/<n>`, with its own history, so a
loop of long iterations never grows one history; a worker that dies mid-way
costs only the activity that was running (the child's completed steps stand).
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from stepflow.workflows.errors import ErrorType, StepFailure
from stepflow.workflows.expressions import ExpressionError, is_true
from stepflow.workflows.models import (
    WITH_OUTPUT,
    LoopStep,
    PipelineResult,
    PipelineSpec,
    StepRecord,
)
from stepflow.workflows.steps.base import StepContext
from stepflow.workflows.steps.children import child_id, run_child, scope_for


def body_spec(ctx: StepContext, step: LoopStep) -> PipelineSpec:
    """The body as a pipeline of its own, with the run's inputs, defaults and context."""
    return PipelineSpec(
        name=ctx.spec.name,
        inputs=ctx.spec.inputs,
        max_concurrency=step.max_concurrency or ctx.spec.max_concurrency,
        context=ctx.spec.context,
        defaults=ctx.spec.defaults,
        steps=step.steps,
    )


def by_id(records: list[StepRecord]) -> dict[str, dict[str, Any]]:
    """An iteration's steps as `loop.previous` and `until` read them: `ID.output`, `ID.status`."""
    return {
        # A step a rerun took over succeeded, as far as the loop is concerned.
        r.id: {"output": r.output, "status": "SUCCEEDED" if r.status in WITH_OUTPUT else r.status}
        for r in records
    }


class LoopRunner:
    async def run(self, ctx: StepContext, step: LoopStep, record: StepRecord, resume: bool) -> Any:
        record.max_iterations = step.max_iterations
        spec = body_spec(ctx, step)
        # A rerun from a step inside the loop starts at the iteration it was in.
        rerun = ctx.reuse_inside.get(step.id)
        first = (rerun.iteration or 1) if rerun else 1
        previous: dict[str, dict[str, Any]] | None = rerun.previous if rerun else None
        result: PipelineResult | None = None
        for iteration in range(first, step.max_iterations + 1):
            await workflow.wait_condition(lambda: not ctx.state.paused)
            record.iteration = iteration
            loop = {
                "iteration": iteration,
                "max_iterations": step.max_iterations,
                "previous": previous,
            }
            result = await run_child(
                ctx,
                record,
                spec,
                ctx.inputs,
                child_id(ctx.key(step), str(iteration)),
                f"{ctx.key(step)} · iteration {iteration}/{step.max_iterations}",
                scope_for(ctx, step.depends_on, loop=loop),
                rerun.reuse if rerun and iteration == first else None,
            )
            previous = by_id(result.steps)
            if step.until is not None and self._done(ctx, step, previous, loop):
                return _outputs(result)
        if step.until is None or step.on_exhausted == "last":
            return _outputs(result) if result is not None else None
        raise StepFailure(
            ErrorType.LOOP_EXHAUSTED,
            f"`until` still false after {step.max_iterations} iterations: {step.until}",
            attempts=0,
        )

    @staticmethod
    def _done(
        ctx: StepContext,
        step: LoopStep,
        iteration: dict[str, dict[str, Any]],
        loop: dict[str, Any],
    ) -> bool:
        assert step.until is not None
        context = {"inputs": ctx.inputs, "steps": iteration, "loop": loop}
        try:
            return is_true(step.until, context)
        except ExpressionError as err:
            raise StepFailure(ErrorType.INVALID_EXPRESSION, str(err), attempts=0) from None


def _outputs(result: PipelineResult) -> dict[str, Any]:
    """A loop's output: the last iteration's step outputs, by step id."""
    return {r.id: r.output for r in result.steps}
