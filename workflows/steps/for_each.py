"""for_each: one instance of a tool, agent or pipeline step per item of a list known at run time.

Up to `INLINE_ITEMS` instances run in the pipeline's own run, at most the step's
`max_concurrency` at once. A longer list runs in batches of `BATCH_ITEMS`, each
a child pipeline run of the one step, so that no run in the chain comes near
Temporal's 10,240-event warning line however long the list (a tool instance
costs up to 6 events: 3 for its activity, 3 for the workflow task it ends).
The output is the instances' outputs in item order; with `item_failure:
continue` a failed instance's place holds `{"error": ..., "error_type": ...}`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow

from stepflow.workflows.errors import ErrorType, StepFailure
from stepflow.workflows.expressions import check_expression
from stepflow.workflows.models import PipelineSpec, StepRecord, TokenUsage, add_by_model
from stepflow.workflows.steps.base import AnyStep, StepContext, StepRunner
from stepflow.workflows.steps.children import child_id, run_child, scope_for

INLINE_ITEMS = 100
"""Lists up to this long run in the pipeline's own run."""

BATCH_ITEMS = 1000
"""Instances per child run for longer lists: at most about 6,000 events each."""


def per_item_condition(step: AnyStep) -> bool:
    """Whether the step's `when` reads `item` or `index`: then it is asked of every instance."""
    return step.when is not None and bool(check_expression(step.when).roots & {"item", "index"})


class ForEachRunner:
    """Runs a for_each step's instances with the runner of the step's kind."""

    def __init__(self, runners: dict[str, StepRunner]) -> None:
        self.runners = runners

    async def run(
        self,
        ctx: StepContext,
        step: AnyStep,
        record: StepRecord,
        items: list[Any] | None = None,
        offset: int = 0,
    ) -> list[Any]:
        """Run every instance; `items` given: a batch of a longer list, from `offset`."""
        if items is None:
            items = ctx.render(step, getattr(step, "for_each", None))
            if not isinstance(items, list):
                raise StepFailure(
                    ErrorType.FOR_EACH_NOT_A_LIST,
                    f"for_each gave {type(items).__name__}, not a list: {str(items)[:80]!r}",
                    attempts=0,
                )
            if len(items) > INLINE_ITEMS:
                return await self._in_batches(ctx, step, record, items)
        record.items = len(items)
        record.items_done = record.items_failed = 0
        ctx.publish()
        return await self._inline(ctx, step, record, items, offset)

    async def _inline(
        self, ctx: StepContext, step: AnyStep, record: StepRecord, items: list[Any], offset: int
    ) -> list[Any]:
        limit = getattr(step, "max_concurrency", None) or ctx.spec.max_concurrency
        keep_going = getattr(step, "item_failure", "fail") == "continue"
        ask_each = per_item_condition(step)
        runner = self.runners[step.kind]
        outputs: list[Any] = [None] * len(items)
        running: dict[int, asyncio.Task[Any]] = {}
        failure: list[StepFailure] = []

        async def instance(position: int) -> None:
            index = offset + position
            one = ctx.instance(items[position], index)
            scratch = StepRecord(id=one.key(step), kind=step.kind)
            try:
                if ask_each and step.when is not None and not one.condition(step, step.when):
                    return  # this item's output stays null
                outputs[position] = await runner.run(one, step, scratch, False)
            except StepFailure as failed:
                record.items_failed = (record.items_failed or 0) + 1
                if not keep_going:
                    failure.append(
                        StepFailure(
                            failed.error_type, f"item {index}: {failed.message}", failed.attempts
                        )
                    )
                outputs[position] = {"error": failed.message, "error_type": str(failed.error_type)}
            finally:
                record.items_done = (record.items_done or 0) + 1
                _add(record, scratch)
                ctx.publish()

        try:
            for position in range(len(items)):
                await workflow.wait_condition(
                    lambda: bool(failure) or (len(running) < limit and not ctx.state.paused)
                )
                if failure:
                    break
                task = asyncio.create_task(instance(position))
                running[position] = task
                task.add_done_callback(_forget(running, position))
            await workflow.wait_condition(lambda: not running or bool(failure))
        except asyncio.CancelledError:
            await _stop(running)
            raise
        if failure:
            await _stop(running)
            raise failure[0]
        return outputs

    async def _in_batches(
        self, ctx: StepContext, step: AnyStep, record: StepRecord, items: list[Any]
    ) -> list[Any]:
        """A long list: one child run per `BATCH_ITEMS` items, one batch after another."""
        record.items = len(items)
        record.items_done = record.items_failed = 0
        ctx.publish()
        limit = getattr(step, "max_concurrency", None) or ctx.spec.max_concurrency
        spec = PipelineSpec(
            name=ctx.spec.name,
            inputs=ctx.spec.inputs,
            max_concurrency=limit,
            context=ctx.spec.context,
            defaults=ctx.spec.defaults,
            steps=[step.model_copy(update={"on_failure": "fail", "when": _batch_when(step)})],
        )
        outputs: list[Any] = []
        batches = (len(items) + BATCH_ITEMS - 1) // BATCH_ITEMS
        for number, start in enumerate(range(0, len(items), BATCH_ITEMS), start=1):
            await workflow.wait_condition(lambda: not ctx.state.paused)
            batch = items[start : start + BATCH_ITEMS]
            result = await run_child(
                ctx,
                record,
                spec,
                ctx.inputs,
                child_id(ctx.key(step), f"batch-{number}"),
                f"{ctx.key(step)} · items {start}-{start + len(batch) - 1} "
                f"(batch {number}/{batches})",
                scope_for(ctx, step.depends_on, loop=ctx.loop, items=batch, offset=start),
            )
            done = result.steps[0]
            outputs.extend(done.output or [None] * len(batch))
            record.items_done = (record.items_done or 0) + len(batch)
            record.items_failed = (record.items_failed or 0) + (done.items_failed or 0)
            record.tool_calls = _sum(record.tool_calls, done.tool_calls)
            record.model = done.model or record.model
            ctx.publish()
        return outputs


def _batch_when(step: AnyStep) -> str | None:
    """A batch asks only the per-item condition: the step's own was asked before it started."""
    return step.when if per_item_condition(step) else None


def _forget(running: dict[int, asyncio.Task[Any]], position: int) -> Any:
    """A done callback that takes an ended instance off the running ones."""
    return lambda _task: running.pop(position, None)


async def _stop(running: dict[int, asyncio.Task[Any]]) -> None:
    """Cancel the instances still running and wait until they have ended."""
    tasks = list(running.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _add(record: StepRecord, instance: StepRecord) -> None:
    """An instance's model calls, tokens, cost and tool calls count for the step."""
    if instance.usage is not None:
        record.usage = (record.usage or TokenUsage()).plus(instance.usage)
    if instance.usage_by_model:
        record.usage_by_model = add_by_model(record.usage_by_model or {}, instance.usage_by_model)
    record.tool_calls = _sum(record.tool_calls, instance.tool_calls)
    record.model = instance.model or record.model
    record.attempts = max(record.attempts, instance.attempts)


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)
