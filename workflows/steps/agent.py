"""Agent steps: a child `AgentStepWorkflow` that sees only what the pipeline's context allows.

A step with `inline: true` runs the same loop (`workflows.agent_loop.AgentLoop`) in the
pipeline's own workflow instead (`InlineAgent`): no child to start and no result to take
from one, so three workflow tasks fewer a step; its progress goes straight onto its record.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import pydantic
from temporalio import workflow
from temporalio.exceptions import CancelledError, ChildWorkflowError

from stepflow.workflows.agent_loop import AgentLoop
from stepflow.workflows.control import StepProgress
from stepflow.workflows.errors import StepFailure, child_failure
from stepflow.workflows.models import (
    AGENT_STEP_WORKFLOW,
    AgentStep,
    AgentStepInput,
    AgentStepResult,
    PassedOver,
    StepRecord,
    StepStatus,
    TokenUsage,
    effective_cache,
    model_call_retry,
    model_call_timeout,
    tool_call_retry,
    tool_call_timeout,
)
from stepflow.workflows.steps.base import StepContext, idempotency_key
from stepflow.workflows.steps.cache import cached


def agent_workflow_id(step_id: str) -> str:
    """The id of an agent step's child workflow: `<pipeline's workflow id>/<step id>`."""
    return f"{workflow.info().workflow_id}/{step_id}"


class AgentRunner:
    async def run(self, ctx: StepContext, step: AgentStep, record: StepRecord, resume: bool) -> Any:
        record.max_model_calls = step.max_model_calls

        async def call() -> Any:
            try:
                agent = await self.call(ctx, step, record)
            except StepFailure as failure:
                take_failed_agent(record, failure.agent)
                raise
            record.attempts = 1
            record.model_call = agent.usage.model_calls  # the calls it made
            record.model = agent.model
            record.usage = agent.usage
            record.tool_calls = agent.tool_calls
            record.usage_by_model = agent.usage_by_model
            record.passed_over = agent.passed_over
            ctx.state.transcripts.extend(agent.transcript or [])
            return agent.output

        if effective_cache(step, ctx.spec.defaults) is None:
            return await call()
        # What the agent's answer depends on: what it is told, what it sees, what it may use.
        material = {
            "model": step.model,
            "instructions": ctx.render(step, step.instructions),
            "input": ctx.render(step, step.input),
            "context": ctx.dependency_outputs(step)
            if ctx.spec.context == "dependencies"
            else ctx.state.outputs(),
            "tools": sorted(step.tools),
            "output_schema": step.output_schema,
            "max_model_calls": step.max_model_calls,
        }
        return await cached(ctx, step, record, material, call)

    async def call(self, ctx: StepContext, step: AgentStep, record: StepRecord) -> AgentStepResult:
        spec = ctx.spec
        instructions = ctx.render(step, step.instructions)
        step_input = ctx.render(step, step.input)
        declared = ctx.dependency_outputs(step)
        full = spec.context == "full"
        agent_input = AgentStepInput(
            pipeline=spec.name,
            step=step,
            instructions=str(instructions),
            input=step_input,
            # Only what the step declared, unless the pipeline asks for the whole history.
            context=ctx.state.outputs() if full else declared,
            history=list(ctx.state.transcripts) if full else [],
            keep_transcript=full,
            model_retry=model_call_retry(step, spec.defaults),
            model_timeout=model_call_timeout(step, spec.defaults),
            tool_retry=tool_call_retry(step, spec.defaults),
            tool_timeout=tool_call_timeout(step, spec.defaults),
            idempotency_prefix=idempotency_key(ctx.key(step)),
            routing=ctx.routing,
            budgets=ctx.budgets,
        )
        if step.inline:
            return await AgentLoop(agent_input, InlineAgent(ctx, step, record)).run()
        try:
            return await workflow.execute_child_workflow(
                AGENT_STEP_WORKFLOW,
                agent_input,
                result_type=AgentStepResult,
                id=agent_workflow_id(ctx.key(step)),
                static_summary=f"agent step {ctx.key(step)}",
            )
        except ChildWorkflowError as err:
            if isinstance(err.cause, CancelledError) and ctx.cancelling():
                raise asyncio.CancelledError(str(err.cause)) from None
            # Otherwise someone cancelled just this step (Web UI, CLI): it ends, and the
            # pipeline goes on as its on_failure says.
            raise child_failure(err) from None


class InlineAgent:
    """The `AgentHost` of an inline agent step: the pipeline's workflow runs its loop.

    Everything the loop knows is in workflow memory, rebuilt by replay: a worker that dies
    mid-step resumes it without calling a model or tool again. What differs from a child:
    progress goes onto the step's record (no signal, no command), a retrying activity tells
    the pipeline itself (its `step_progress` handler marks the record RETRYING), the step
    fails as a `StepFailure` with the same details a child's failure carries, it never
    continues as new, and a cancelled step's task cancels its activities directly.
    """

    def __init__(self, ctx: StepContext, step: AgentStep, record: StepRecord) -> None:
        self._ctx = ctx
        self._record = record
        # The ids a child would have: budget charges and retry reports stay what they were.
        self._charge = agent_workflow_id(ctx.key(step))
        self._pipeline = workflow.info().workflow_id
        self._published = ctx.state.by_id.get(record.id) is record
        """Not a for_each instance's scratch record, which the run shows only summed."""

    def report_to(self) -> str | None:
        return self._pipeline

    def charge_prefix(self) -> str:
        return self._charge

    def continue_suggested(self, loop: AgentLoop) -> bool:
        return False  # the pipeline continues as new between steps, never inside one

    async def continue_as_new(self, loop: AgentLoop) -> NoReturn:
        raise AssertionError("an inline agent step never continues as new")

    def bounded_tool_calls(self) -> bool:
        return True  # no history before this code ran an inline step

    def report_progress(self, loop: AgentLoop, progress: StepProgress) -> None:
        """The call starting (or its tools), onto the record `status` and the Web UI show."""
        record = self._record
        state = loop.state
        if progress.model_call is not None:
            record.model_call = progress.model_call
        record.usage = state.usage
        record.tool_calls = state.tool_calls
        record.model = state.model or record.model
        if not self._published:
            return
        if record.status is StepStatus.RETRYING:  # the call or tool that retried is over
            self._ctx.state.set_status(record, StepStatus.RUNNING)
            record.attempts = 1
        self._ctx.publish()

    def show(self, loop: AgentLoop) -> None:
        """A chain's next model: the record names the model that answered last, as before."""

    def fail(self, message: str, error_type: str, details: dict[str, Any]) -> NoReturn:
        raise StepFailure(str(error_type), message, agent=details)


_USAGE_BY_MODEL = pydantic.TypeAdapter(dict[str, TokenUsage])
_PASSED_OVER = pydantic.TypeAdapter(list[PassedOver])


def take_failed_agent(record: StepRecord, agent: dict[str, Any]) -> None:
    """What a failed agent step spent and tried, from its failure's details, onto its record.

    The same model, usage and tool calls the pipeline's `RunState.fail` takes, so that a
    for_each instance's record (which that never sees) counts them too; and the tokens per
    model and the models passed over. Details that do not parse are left out, never raised:
    workflow code must not fail its task on data.
    """
    if not agent:
        return
    try:
        record.usage = TokenUsage.model_validate(agent.get("usage") or {})
        record.model = agent.get("model")
        record.tool_calls = agent.get("tool_calls")
        record.usage_by_model = _USAGE_BY_MODEL.validate_python(agent.get("usage_by_model") or {})
        record.passed_over = _PASSED_OVER.validate_python(agent.get("passed_over") or [])
    except (pydantic.ValidationError, TypeError):
        return
    record.usage_by_model = record.usage_by_model or None
    record.passed_over = record.passed_over or None
