"""Tool steps: one activity, `tool_<name>`, with the step's retry policy and timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from stepflow.workflows.errors import activity_failure
from stepflow.workflows.models import (
    StepRecord,
    ToolCallInput,
    ToolCallOutput,
    ToolStep,
    tool_activity_name,
    tool_call_queue,
)
from stepflow.workflows.steps.base import StepContext, idempotency_key
from stepflow.workflows.steps.cache import cached


class ToolRunner:
    async def run(self, ctx: StepContext, step: ToolStep, record: StepRecord, resume: bool) -> Any:
        args = ctx.render(step, step.args)

        async def call() -> Any:
            called = await self.call(ctx, step, args)
            record.attempts = called.attempt
            return called.output

        return await cached(ctx, step, record, {"tool": step.tool, "args": args}, call)

    async def call(
        self, ctx: StepContext, step: ToolStep, args: dict[str, Any] | None = None
    ) -> ToolCallOutput:
        retry, options = ctx.activity_options(step)
        if args is None:
            args = ctx.render(step, step.args)
        try:
            return await workflow.execute_activity(
                tool_activity_name(step.tool),
                ToolCallInput(
                    step_id=step.id,
                    tool=step.tool,
                    args=args,
                    idempotency_key=idempotency_key(ctx.key(step)),
                ),
                result_type=ToolCallOutput,
                summary=f"{ctx.key(step)} · tool {step.tool}",
                **options,
                **tool_call_queue(ctx.routing, step.tool),
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError(str(err.cause)) from None  # we cancelled it
            raise activity_failure(err, retry) from None
