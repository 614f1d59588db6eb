"""`PipelineWorkflow`: runs a pipeline's DAG; a tool step is one activity, an agent step a child.

Ready-set scheduling: every step whose dependencies have succeeded starts at
once, up to `max_concurrency`, in the order the spec lists them. The workflow
keeps one `StepRecord` per step; Temporal keeps the workflow, so a crashed
worker costs nothing but the attempt that was running.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any

import pydantic
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    RetryState,
    TimeoutError,
)

with workflow.unsafe.imports_passed_through():
    from workflows.activity_options import activity_options
    from workflows.agent import AgentStepWorkflow
    from workflows.models import (
        AgentStep,
        AgentStepInput,
        AgentStepResult,
        ChatMessage,
        Fallback,
        PipelineInput,
        PipelineResult,
        PipelineSpec,
        PipelineStatus,
        RetrySpec,
        StepRecord,
        StepStatus,
        TokenUsage,
        ToolCallInput,
        ToolCallOutput,
        ToolStep,
        effective_retry,
        effective_timeout,
        model_call_retry,
        model_call_timeout,
        tool_activity_name,
        tool_call_retry,
        tool_call_timeout,
    )
    from workflows.templates import TemplateError, render
    from workflows.validation import SpecError, check_pipeline

PIPELINE_WORKFLOW = "stepflow_pipeline"
INVALID_PIPELINE = "InvalidPipeline"
PIPELINE_FAILED = "PipelineFailed"
INVALID_REFERENCE = "InvalidReference"


class _StepFailed(Exception):
    """A step's activity failed for good; carries what its record needs."""

    def __init__(
        self,
        status: StepStatus,
        message: str,
        error_type: str,
        attempts: int,
        agent: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.attempts = attempts
        self.agent = agent or {}
        """An agent step's model, usage and tool calls up to the failure."""


def _step_failure(err: ActivityError, retry: RetrySpec) -> _StepFailed:
    """Read status, message, type and attempt count out of an activity's final failure."""
    cause = err.cause
    attempts = 1
    if isinstance(cause, TimeoutError):
        kind = cause.type.name.lower().replace("_", "-") if cause.type else "activity"
        status, message, error_type = StepStatus.TIMED_OUT, f"{kind} timeout", "Timeout"
    elif isinstance(cause, ApplicationError):
        status, message, error_type = StepStatus.FAILED, cause.message, cause.type or "Error"
        details = cause.details
        if details and isinstance(details[0], dict) and "attempt" in details[0]:
            attempts = int(details[0]["attempt"])
    else:
        status = StepStatus.FAILED
        message, error_type = str(cause or err), type(cause or err).__name__
    if err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED and retry.max_attempts:
        attempts = retry.max_attempts
    return _StepFailed(status, message, error_type, attempts)


@workflow.defn(name=PIPELINE_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class PipelineWorkflow:
    """One run of a pipeline. Input `PipelineInput`, result `PipelineResult`.

    A pipeline that fails (a step with `on_failure: fail` failed for good)
    fails the workflow with an `ApplicationError` of type `PipelineFailed`
    whose first detail is the `PipelineResult`, so the Web UI shows the run as
    failed and clients still get every step's record.
    """

    def __init__(self) -> None:
        self._records: dict[str, StepRecord] = {}
        self._spec_steps: dict[str, ToolStep | AgentStep] = {}
        self._order: dict[str, int] = {}
        self._unmet: dict[str, int] = {}
        self._dependents: dict[str, list[str]] = {}
        self._ready: list[tuple[int, str]] = []
        self._outputs: dict[str, Any] = {}
        self._transcripts: list[ChatMessage] = []
        self._fatal: str | None = None
        self._cancelling = False
        """Set once the pipeline cancels its steps; a cancel from outside fails just one step."""

    @workflow.run
    async def run(self, input: PipelineInput) -> PipelineResult:
        started_at = workflow.now()
        spec = input.spec
        try:
            inputs = check_pipeline(spec, input.inputs)
        except SpecError as err:
            # A user mistake never heals: fail the run now instead of retrying the task.
            raise ApplicationError(
                f"invalid pipeline {spec.name!r}:\n{err}", type=INVALID_PIPELINE, non_retryable=True
            ) from None

        self._records = {s.id: StepRecord(id=s.id, kind=s.kind) for s in spec.steps}
        self._plan(spec)
        running: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                while self._fatal is None and self._ready and len(running) < spec.max_concurrency:
                    _, step_id = heapq.heappop(self._ready)
                    step = self._spec_steps[step_id]
                    self._records[step_id].status = StepStatus.RUNNING
                    self._records[step_id].started_at = workflow.now()
                    running[step_id] = asyncio.create_task(self._run_step(spec, step, inputs))
                if not running:
                    break
                done, _ = await workflow.wait(
                    list(running.values()), return_when=asyncio.FIRST_COMPLETED
                )
                for step_id in [sid for sid, task in running.items() if task in done]:
                    running.pop(step_id).result()
                    self._settle(step_id)
                if self._fatal is not None:
                    await self._cancel_all(running, f"pipeline failed at step {self._fatal!r}")
        except asyncio.CancelledError:
            await self._cancel_all(running, "pipeline was cancelled")
            raise

        result = self._result(spec, started_at)
        if result.status is PipelineStatus.FAILED:
            raise ApplicationError(
                result.error or "pipeline failed",
                result.model_dump(mode="json"),
                type=PIPELINE_FAILED,
                non_retryable=True,
            )
        return result

    def _plan(self, spec: PipelineSpec) -> None:
        """Index the DAG once, so each finished step costs only its dependents, not all N steps."""
        self._spec_steps = {s.id: s for s in spec.steps}
        self._order = {s.id: i for i, s in enumerate(spec.steps)}
        self._unmet = {s.id: len(set(s.depends_on)) for s in spec.steps}
        self._dependents = {s.id: [] for s in spec.steps}
        for s in spec.steps:
            for dep in dict.fromkeys(s.depends_on):
                self._dependents[dep].append(s.id)
        # Ready steps start in the order the spec lists them: a heap of (position, id).
        self._ready = [(self._order[sid], sid) for sid, n in self._unmet.items() if n == 0]
        heapq.heapify(self._ready)

    def _settle(self, step_id: str) -> None:
        """After a step finished: release its dependents, or skip them if it did not succeed."""
        status = self._records[step_id].status
        if status is StepStatus.SUCCEEDED:
            for dependent in self._dependents[step_id]:
                self._unmet[dependent] -= 1
                if self._unmet[dependent] == 0:
                    heapq.heappush(self._ready, (self._order[dependent], dependent))
            return
        if self._fatal is not None:
            return  # the whole pipeline stops; _cancel_all gives every pending step that reason
        blocked = [(step_id, status)]
        while blocked:
            cause, cause_status = blocked.pop()
            for dependent in self._dependents[cause]:
                record = self._records[dependent]
                if record.status is StepStatus.PENDING:
                    record.status = StepStatus.SKIPPED
                    record.reason = (
                        f"dependency {cause!r} {cause_status.value.lower().replace('_', ' ')}"
                    )
                    blocked.append((dependent, StepStatus.SKIPPED))

    async def _cancel_all(self, running: dict[str, asyncio.Task[None]], reason: str) -> None:
        self._cancelling = True
        for task in running.values():
            task.cancel()
        for step_id, task in list(running.items()):
            try:
                await task
            except asyncio.CancelledError:
                record = self._records[step_id]
                record.status = StepStatus.CANCELLED
                record.reason = reason
                record.ended_at = workflow.now()
        running.clear()
        self._ready.clear()
        for record in self._records.values():
            if record.status is StepStatus.PENDING:
                record.status = StepStatus.SKIPPED
                record.reason = reason

    async def _run_step(
        self, spec: PipelineSpec, step: ToolStep | AgentStep, inputs: dict[str, Any]
    ) -> None:
        record = self._records[step.id]
        try:
            if isinstance(step, AgentStep):
                agent = await self._run_agent(spec, step, inputs)
                output, record.attempts = agent.output, 1
                record.model = agent.model
                record.usage = agent.usage
                record.tool_calls = agent.tool_calls
                self._transcripts.extend(agent.transcript or [])
            else:
                called = await self._call_tool(spec, step, inputs)
                output, record.attempts = called.output, called.attempt
        except _StepFailed as failed:
            record.status = failed.status
            record.error = failed.message
            record.error_type = failed.error_type
            record.attempts = failed.attempts
            record.ended_at = workflow.now()
            if failed.agent:
                record.model = failed.agent.get("model")
                record.usage = TokenUsage.model_validate(failed.agent.get("usage") or {})
                record.tool_calls = failed.agent.get("tool_calls")
            self._apply_on_failure(step, record)
            return
        record.status = StepStatus.SUCCEEDED
        record.output = output
        record.ended_at = workflow.now()
        self._outputs[step.id] = output

    async def _run_agent(
        self, spec: PipelineSpec, step: AgentStep, inputs: dict[str, Any]
    ) -> AgentStepResult:
        """Run the step as a child workflow that sees only what the pipeline's context allows."""
        declared = {d: self._outputs[d] for d in step.depends_on}
        try:
            instructions = render(step.instructions, inputs, declared)
            step_input = render(step.input, inputs, declared)
        except TemplateError as err:
            raise _StepFailed(StepStatus.FAILED, str(err), INVALID_REFERENCE, 0) from None
        full = spec.context == "full"
        info = workflow.info()
        try:
            return await workflow.execute_child_workflow(
                AgentStepWorkflow.run,
                AgentStepInput(
                    pipeline=spec.name,
                    step=step,
                    instructions=str(instructions),
                    input=step_input,
                    # Only what the step declared, unless the pipeline asks for the whole history.
                    context=dict(self._outputs) if full else declared,
                    history=list(self._transcripts) if full else [],
                    keep_transcript=full,
                    model_retry=model_call_retry(step, spec.defaults),
                    model_timeout=model_call_timeout(step, spec.defaults),
                    tool_retry=tool_call_retry(step, spec.defaults),
                    tool_timeout=tool_call_timeout(step, spec.defaults),
                    idempotency_prefix=f"{info.workflow_id}/{info.first_execution_run_id}/{step.id}",
                ),
                id=f"{info.workflow_id}/{step.id}",
                static_summary=f"agent step {step.id}",
            )
        except ChildWorkflowError as err:
            cause = err.cause
            if isinstance(cause, CancelledError):
                if self._cancelling:
                    raise asyncio.CancelledError(str(cause)) from None
                # Someone cancelled just this step (Web UI, CLI): it ends, the pipeline goes on
                # as its on_failure says.
                raise _StepFailed(
                    StepStatus.CANCELLED, "the agent step was cancelled", "Cancelled", 1
                ) from None

            if isinstance(cause, ApplicationError):
                details = cause.details[0] if cause.details else None
                raise _StepFailed(
                    StepStatus.FAILED,
                    cause.message,
                    cause.type or "Error",
                    1,
                    details if isinstance(details, dict) else None,
                ) from None
            raise _StepFailed(
                StepStatus.FAILED, str(cause or err), type(cause or err).__name__, 1
            ) from None

    async def _call_tool(
        self, spec: PipelineSpec, step: ToolStep, inputs: dict[str, Any]
    ) -> ToolCallOutput:
        retry = effective_retry(step, spec.defaults)
        try:
            args = render(step.args, inputs, {d: self._outputs[d] for d in step.depends_on})
        except TemplateError as err:
            raise _StepFailed(StepStatus.FAILED, str(err), INVALID_REFERENCE, 0) from None
        timeout = effective_timeout(step, spec.defaults)
        info = workflow.info()
        try:
            return await workflow.execute_activity(
                tool_activity_name(step.tool),
                ToolCallInput(
                    step_id=step.id,
                    tool=step.tool,
                    args=args,
                    # The same on every retry, and across continue-as-new.
                    idempotency_key=f"{info.workflow_id}/{info.first_execution_run_id}/{step.id}",
                ),
                result_type=ToolCallOutput,
                summary=f"{step.id} · tool {step.tool}",
                **activity_options(retry, timeout),
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError(str(err.cause)) from None  # we cancelled it
            raise _step_failure(err, retry) from None

    def _apply_on_failure(self, step: ToolStep | AgentStep, record: StepRecord) -> None:
        policy = step.on_failure
        if isinstance(policy, Fallback):
            record.status = StepStatus.SUCCEEDED
            record.used_fallback = True
            record.output = policy.fallback
            self._outputs[step.id] = policy.fallback
        elif policy == "fail" and self._fatal is None:
            self._fatal = step.id
        # "continue": the record stays failed; _settle skips its dependents.

    def _result(self, spec: PipelineSpec, started_at: Any) -> PipelineResult:
        error = None
        if self._fatal is not None:
            failed = self._records[self._fatal]
            error = f"step {failed.id!r} failed: {failed.error}"
        usage = TokenUsage()
        for record in self._records.values():
            usage = usage.plus(record.usage)
        return PipelineResult(
            pipeline=spec.name,
            usage=usage,
            status=PipelineStatus.FAILED if self._fatal else PipelineStatus.SUCCEEDED,
            steps=[self._records[s.id] for s in spec.steps],
            error=error,
            started_at=started_at,
            ended_at=workflow.now(),
        )
