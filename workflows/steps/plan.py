"""Plan steps: a model makes a plan (a pipeline fragment), a person may approve it, it runs.

1. The planner is an agent conversation without tools, a child `AgentStepWorkflow`
   `<run id>/<step id>` whose final answer must be a plan within the step's `allow`:
   the model activity checks it as `stepflow validate` checks a pipeline file
   (`activities.plan_check`), and sends an invalid one back with the errors, at
   most `max_plan_repairs` times (then the step fails `PlanInvalid`).
2. The plan goes on the step's record (`record.plan`); with `approve` the step
   waits for `stepflow approve RUN STEP` as an approval step does: it frees its
   concurrency slot meanwhile, and the run may continue as new while it waits
   (the next run picks the wait up, the plan on the record).
3. The plan runs as a child pipeline run `<run id>/<step id>/plan` with the
   step's rendered `input` as `inputs.request`; the step's output is its outputs.

A worker that dies costs only the activity that was running: the planner's answer
is in history, the plan on the record, and the child run's completed steps stand.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import CancelledError, ChildWorkflowError

from stepflow.workflows.errors import ErrorType, StepFailure, child_failure
from stepflow.workflows.models import (
    AGENT_STEP_WORKFLOW,
    AgentStep,
    AgentStepInput,
    AgentStepResult,
    ApprovalStep,
    InputSpec,
    PipelineSpec,
    PlanApproval,
    PlanStep,
    StepRecord,
    model_call_retry,
    model_call_timeout,
    tool_call_retry,
    tool_call_timeout,
)
from stepflow.workflows.steps.agent import agent_workflow_id, take_failed_agent
from stepflow.workflows.steps.base import StepContext, idempotency_key
from stepflow.workflows.steps.children import child_id, outputs_of, run_child
from stepflow.workflows.steps.human import HumanRunner
from stepflow.workflows.validation import check_pipeline

PLANNED_RUN = "plan"
"""The last part of the planned child run's id: `<run id>/<step id>/plan`."""

REQUEST_INPUT = "request"
"""The one input of a planned run: the plan step's rendered `input`."""

PLANNER_SUMMARY = "planner of step "
"""How the planner's child workflow is summarised (`planner of step X`): `stepflow history`
shows its result, the plan, as a table."""

MODEL_CALL_SLACK = 1
"""Model calls a planner may make beyond one per answer it may give (a stray tool call)."""

AWAY_WHILE_APPROVING_PATCH = "plan-approval-frees-its-slot"
"""Runs whose plan waited for approval holding its slot (and keeping the run from continuing
as new) replay as they ran."""


def plan_guide(step: PlanStep) -> str:
    """What the planner is told besides the step's instructions: how a plan is written."""
    allow = step.allow
    kinds = ", ".join(allow.kinds)
    tools = ", ".join(allow.tools) or "none"
    return (
        "Answer with a plan, not with the work itself: a JSON object with `steps` and, "
        "optionally, `outputs`. The plan runs as a pipeline once it has been checked.\n"
        f"- At most {allow.max_steps} steps, of these kinds: {kinds}. Tools: {tools}.\n"
        "- A tool step calls one tool with `args`; an agent step is a model conversation "
        "with `instructions`, an `input` and the `tools` it may call.\n"
        "- Step ids are letters, digits, `_` and `-`, starting with a letter or `_`.\n"
        "- A step starts once the steps in its `depends_on` have succeeded, and reads only "
        "their outputs: {{ steps.ID.output }} or {{ steps.ID.output.FIELD }}. The request "
        "is {{ inputs.request }}.\n"
        "- `outputs` names what the plan returns, e.g. "
        '{"summary": "{{ steps.ID.output }}"}.\n'
        "If the plan is invalid you get the list of errors and answer with a corrected plan."
    )


def planner_step(step: PlanStep) -> AgentStep:
    """The planner as an agent step: no tools; one answer per repair (and a little slack)."""
    return AgentStep(
        id=step.id,
        kind="agent",
        description=step.description,
        depends_on=step.depends_on,
        instructions=step.instructions,
        input=step.input,
        model=step.model,
        model_fallback=step.model_fallback,
        budget=step.budget,
        retry=step.retry,
        timeout=step.timeout,
        tools=[],
        max_model_calls=step.max_plan_repairs + 1 + MODEL_CALL_SLACK,
        max_output_repairs=step.max_plan_repairs,
    )


def planned_spec(parent: PipelineSpec, step_key: str, plan: dict[str, Any]) -> PipelineSpec:
    """The plan as the pipeline it runs: the parent's name, defaults and concurrency.

    Raises:
        pydantic.ValidationError: a plan that is no pipeline (the model activity checked it; a
            worker of other code may have judged otherwise).
    """
    return PipelineSpec.model_validate(
        {
            "name": parent.name,
            "description": f"the plan made by step {step_key!r} of {parent.name!r}",
            "inputs": {REQUEST_INPUT: InputSpec(type="any")},
            "max_concurrency": parent.max_concurrency,
            "context": parent.context,
            "defaults": parent.defaults,
            "steps": plan.get("steps"),
            "outputs": plan.get("outputs"),
        }
    )


def approval_of(step: PlanStep, key: str, spec: PipelineSpec) -> ApprovalStep:
    """The approval the step waits for, as an approval step (`steps.human` runs it)."""
    settings = step.approve if isinstance(step.approve, PlanApproval) else PlanApproval()
    shown = ", ".join(s.id for s in spec.steps)
    message = settings.message or (
        f"Run the plan of step {key}? {len(spec.steps)} step"
        f"{'s' if len(spec.steps) != 1 else ''}: {shown}"
    )
    return ApprovalStep.model_construct(
        id=step.id,
        kind="approval",
        description=None,
        depends_on=step.depends_on,
        on_failure=step.on_failure,
        when=None,
        trigger=step.trigger,
        message=message,
        timeout=settings.timeout,
        on_timeout=settings.on_timeout,
    )


class PlanRunner:
    async def run(self, ctx: StepContext, step: PlanStep, record: StepRecord, resume: bool) -> Any:
        key = ctx.key(step)
        request = ctx.render(step, step.input)
        if record.plan is None:  # a run that continued as new has the plan on the record
            record.plan = await self._plan(ctx, step, record, key, request)
            ctx.publish()
        try:
            spec = planned_spec(ctx.spec, key, record.plan)
            check_pipeline(spec, {REQUEST_INPUT: request})
        except Exception as err:  # whatever the plan holds, never fail the workflow task
            # (a ValidationError or SpecError: the activity judged it with other code)
            raise StepFailure(ErrorType.PLAN_INVALID, f"the plan cannot run: {err}", 0) from None
        if step.approve:
            # Waits as an approval step does: WAITING for approval, a durable timeout. A person
            # may take days: the slot serves other steps meanwhile, and the run may hand over.
            away = workflow.patched(AWAY_WHILE_APPROVING_PATCH)
            if away:
                ctx.waits_for_person(step.id)
            try:
                await HumanRunner().run(ctx, approval_of(step, key, spec), record, resume)
            finally:
                if away:
                    ctx.answered(step.id)
        await workflow.wait_condition(lambda: not ctx.state.paused)
        result = await run_child(
            ctx,
            record,
            spec,
            {REQUEST_INPUT: request},
            child_id(key, PLANNED_RUN),
            f"plan of step {key} ({len(spec.steps)} step{'s' if len(spec.steps) != 1 else ''})",
        )
        return outputs_of(result, spec)

    async def _plan(
        self, ctx: StepContext, step: PlanStep, record: StepRecord, key: str, request: Any
    ) -> dict[str, Any]:
        """Ask the planner; its checked plan (the model activity refused invalid ones)."""
        spec = ctx.spec
        instructions = f"{ctx.render(step, step.instructions)}\n\n{plan_guide(step)}"
        full = spec.context == "full"
        try:
            planner = planner_step(step)
            planner_input = AgentStepInput(
                pipeline=spec.name,
                step=planner,
                instructions=instructions,
                input=request,
                context=ctx.state.outputs() if full else ctx.dependency_outputs(step),
                history=list(ctx.state.transcripts) if full else [],
                keep_transcript=False,
                model_retry=model_call_retry(planner, spec.defaults),
                model_timeout=model_call_timeout(planner, spec.defaults),
                tool_retry=tool_call_retry(planner, spec.defaults),
                tool_timeout=tool_call_timeout(planner, spec.defaults),
                idempotency_prefix=idempotency_key(key),
                routing=ctx.routing,
                budgets=list(ctx.budgets),
                plan=step.allow,
            )
        except Exception as err:  # the models checked these fields already: never fail the task
            raise StepFailure(ErrorType.INVALID_PIPELINE, f"the planner: {err}", 0) from None
        record.max_model_calls = planner.max_model_calls
        try:
            result = await workflow.execute_child_workflow(
                AGENT_STEP_WORKFLOW,
                planner_input,
                result_type=AgentStepResult,
                id=agent_workflow_id(key),
                static_summary=f"{PLANNER_SUMMARY}{key}",
            )
        except ChildWorkflowError as err:
            if isinstance(err.cause, CancelledError) and ctx.cancelling():
                raise asyncio.CancelledError(str(err.cause)) from None
            failure = child_failure(err)
            take_failed_agent(record, failure.agent)  # what the planner spent, per model too
            raise failure from None
        record.attempts = 1
        record.model = result.model
        record.model_call = result.usage.model_calls
        record.usage = result.usage
        record.usage_by_model = result.usage_by_model
        record.passed_over = result.passed_over
        if not isinstance(result.output, dict):
            raise StepFailure(ErrorType.PLAN_INVALID, "the planner's answer is not a plan", 0)
        return result.output
