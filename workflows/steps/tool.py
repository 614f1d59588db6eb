"""Tool steps: one activity, `tool_<name>`, with the step's retry policy and timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from stepflow.workflows.activity_options import activity_options
from stepflow.workflows.errors import activity_failure
from stepflow.workflows.models import (
    StepRecord,
    ToolCallInput,
    ToolCallOutput,
    ToolStep,
    effective_retry,
    effective_timeout,
    tool_activity_name,
    tool_call_queue,
)
from stepflow.workflows.steps.base import StepContext, idempotency_key


class ToolRunner:
    async def run(self, ctx: StepContext, step: ToolStep, record: StepRecord, resume: bool) -> Any:
        called = await self.call(ctx, step)
        record.attempts = called.attempt
        return called.output

    async def call(self, ctx: StepContext, step: ToolStep) -> ToolCallOutput:
        retry = effective_retry(step, ctx.spec.defaults)
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
                **activity_options(retry, effective_timeout(step, ctx.spec.defaults)),
                **tool_call_queue(ctx.routing, step.tool),
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError(str(err.cause)) from None  # we cancelled it
            raise activity_failure(err, retry) from None
