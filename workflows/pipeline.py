"""`PipelineWorkflow`: runs a pipeline's DAG; a tool step is one activity, an agent step a child.

Ready-set scheduling: every step whose dependencies have succeeded starts at
once, up to `max_concurrency`, in the order the spec lists them. The workflow
keeps one `StepRecord` per step; Temporal keeps the workflow, so a crashed
worker costs nothing but the attempt that was running.

Long runs continue as new when the server suggests it (its history has grown
long): no new step starts, the running activities and agent steps finish
(they belong to this run), and the next run of the chain takes over the step
records, with approval and input steps still waiting, until their deadlines.
"""

from __future__ import annotations

import asyncio
import heapq
from datetime import timedelta
from typing import Any, Literal

import pydantic
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    RetryState,
)
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from stepflow.workflows import requests
    from stepflow.workflows.activity_options import activity_options
    from stepflow.workflows.agent import AgentStepWorkflow
    from stepflow.workflows.control import (
        APPROVE,
        CANCEL_STEP,
        INPUT,
        PAUSE,
        PIPELINE_ATTRIBUTE,
        REJECT,
        RESUME,
        STATUS_ATTRIBUTE,
        STATUS_QUERY,
        STEP_PROGRESS,
        PipelineState,
        RunStatus,
        StepInput,
        StepProgress,
        StepRequest,
    )
    from stepflow.workflows.models import (
        AgentStep,
        AgentStepInput,
        AgentStepResult,
        ApprovalStep,
        ChatMessage,
        Fallback,
        InputStep,
        PipelineCarry,
        PipelineInput,
        PipelineResult,
        PipelineSpec,
        PipelineStatus,
        RetrySpec,
        StepRecord,
        StepStatus,
        TaskRouting,
        TokenUsage,
        ToolCallInput,
        ToolCallOutput,
        ToolStep,
        effective_retry,
        effective_timeout,
        model_call_retry,
        model_call_timeout,
        tool_activity_name,
        tool_call_queue,
        tool_call_retry,
        tool_call_timeout,
    )
    from stepflow.workflows.run_view import counts, details_markdown, live_status
    from stepflow.workflows.step_metrics import StepCounter
    from stepflow.workflows.templates import TemplateError, render
    from stepflow.workflows.validation import SpecError, check_pipeline

AnyStep = ToolStep | AgentStep | ApprovalStep | InputStep

PIPELINE_WORKFLOW = "stepflow_pipeline"
INVALID_PIPELINE = "InvalidPipeline"
PIPELINE_FAILED = "PipelineFailed"
INVALID_REFERENCE = "InvalidReference"
REJECTED = "Rejected"
CANCELLED_BY_REQUEST = "Cancelled"

CONTINUE_AS_NEW_PATCH = "continue-as-new-when-suggested"
"""Runs that went past the server's suggestion before this code replay without continuing."""

CANCEL_CHAIN_PATCH = "cancel-agent-step-chain"
"""Runs that cancelled an agent step before this code replay without the second request."""

MAX_CARRIED_BYTES = 2_000_000
"""The largest next-run input (spec, inputs, records) a run hands over without a payload store.

Below Temporal's 2 MB. A run whose state has outgrown it does not continue as
new: it runs on in one history (the suggestion comes early; Temporal's hard
limit is 51,200 events or 50 MB) and says so in the worker log. Runs started by
a client with the payload store on (`PipelineInput.payload_store`) have no such
limit: the store keeps a large input outside history.
"""


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
    if isinstance(cause, ActivityTimeout):
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

    While it runs it answers the `status` query and the control updates and
    signals of `workflows.control`.
    """

    @workflow.init
    def __init__(self, input: PipelineInput) -> None:
        # Built from the input before anything else runs, so a query or an update that
        # arrives with the run's first task already finds every step.
        spec = input.spec
        carried = input.carried
        self._spec = spec
        self._records: dict[str, StepRecord] = {
            s.id: StepRecord(id=s.id, kind=s.kind) for s in spec.steps
        }
        if carried is not None:
            self._records.update({r.id: r for r in carried.records if r.id in self._records})
        self._spec_steps: dict[str, AnyStep] = {s.id: s for s in spec.steps}
        self._order: dict[str, int] = {}
        self._unmet: dict[str, int] = {}
        self._dependents: dict[str, list[str]] = {}
        self._ready: list[tuple[int, str]] = []
        self._outputs: dict[str, Any] = {}
        self._transcripts: list[ChatMessage] = []
        self._fatal: str | None = None
        self._cancelling = False
        """Set once the pipeline cancels its steps; a cancel from outside fails just one step."""
        self._running: dict[str, asyncio.Task[None]] = {}
        self._chain_cancels: set[asyncio.Task[None]] = set()
        """Cancel requests sent to agent steps' current runs, until Temporal has them."""
        self._paused = False
        self._cancel_requests: dict[str, str | None] = {}
        """Steps someone asked to cancel, with the comment they gave."""
        self._answers: dict[str, tuple[str, Any]] = {}
        """What people answered waiting steps: ("approve"|"reject", comment) or ("input", value)."""
        self._started_at = carried.started_at if carried else workflow.now()
        self._draining = False
        """The server suggested continuing as new: no step starts until this run has handed over."""
        self._carry_refused = False
        """The state is too big to hand over: this run goes on to the end."""
        self._runs_before = carried.runs if carried else 0
        if carried is not None:
            self._outputs = {
                r.id: r.output for r in carried.records if r.status is StepStatus.SUCCEEDED
            }
            self._transcripts = list(carried.transcripts)
            self._paused = carried.paused
            self._cancel_requests = dict(carried.cancel_requests)
            self._answers = dict(carried.answers)
        self._ended: RunStatus | None = None
        self._error: str | None = None
        self._published: RunStatus | None = None
        self._keep_attributes = False
        self._update_task: int | None = None
        """History length of the workflow task that last accepted an update."""
        self._routing: TaskRouting | None = input.routing
        self._step_counter = StepCounter(spec.name, carried.records if carried else ())
        self._plan(spec)  # before any handler runs: a cancel_step in the first task settles

    @workflow.run
    async def run(self, input: PipelineInput) -> PipelineResult:
        spec = input.spec
        self._start_visibility(spec)
        try:
            inputs = check_pipeline(spec, input.inputs)
        except SpecError as err:
            # A user mistake never heals: fail the run now instead of retrying the task.
            message = f"invalid pipeline {spec.name!r}:\n{err}"
            self._end(RunStatus.FAILED, message)
            raise ApplicationError(message, type=INVALID_PIPELINE, non_retryable=True) from None

        try:
            self._resume_waiting(spec, inputs)
            while True:
                self._start_ready(spec, inputs)
                self._publish()
                if not self._running and (self._fatal is not None or not self._has_ready()):
                    break
                if self._draining and self._busy() == 0 and self._fatal is None:
                    await self._continue_as_new(input)  # returns if it must wait a task first
                else:
                    await workflow.wait_condition(self._should_wake)
                for step_id in [sid for sid, task in self._running.items() if task.done()]:
                    self._running.pop(step_id).result()
                    self._settle(step_id)
                if self._fatal is not None:
                    await self._cancel_all(f"pipeline failed at step {self._fatal!r}")
                elif not self._draining and self._continue_suggested():
                    self._draining = True
        except asyncio.CancelledError:
            await self._cancel_all("pipeline was cancelled")
            self._end(RunStatus.CANCELLED, "the run was cancelled")
            await self._answer_updates_before_closing()
            raise

        result = self._result(spec, self._started_at)
        self._end(
            RunStatus.FAILED if result.status is PipelineStatus.FAILED else RunStatus.SUCCEEDED,
            result.error,
        )
        await self._answer_updates_before_closing()
        if result.status is PipelineStatus.FAILED:
            raise ApplicationError(
                result.error or "pipeline failed",
                result.model_dump(mode="json"),
                type=PIPELINE_FAILED,
                non_retryable=True,
            )
        return result

    # -- scheduling ---------------------------------------------------------

    def _plan(self, spec: PipelineSpec) -> None:
        """Index the DAG once, so each finished step costs only its dependents, not all N steps."""
        self._order = {s.id: i for i, s in enumerate(spec.steps)}
        # A continued run's steps count only the dependencies that have not succeeded yet.
        self._unmet = {
            s.id: sum(1 for d in set(s.depends_on) if not self._succeeded(d)) for s in spec.steps
        }
        self._dependents = {s.id: [] for s in spec.steps}
        for s in spec.steps:
            for dep in dict.fromkeys(s.depends_on):
                # An unknown dependency fails the run in `run`; here it must not raise.
                self._dependents.setdefault(dep, []).append(s.id)
        # Ready steps start in the order the spec lists them: a heap of (position, id).
        self._ready = [
            (self._order[sid], sid)
            for sid, n in self._unmet.items()
            if n == 0 and self._records[sid].status is StepStatus.PENDING
        ]
        heapq.heapify(self._ready)

    def _succeeded(self, step_id: str) -> bool:
        record = self._records.get(step_id)
        return record is not None and record.status is StepStatus.SUCCEEDED

    def _busy(self) -> int:
        """Running steps that count towards max_concurrency: people waiting take no slot."""
        return sum(1 for sid in self._running if not _is_human(self._spec_steps[sid]))

    def _has_ready(self) -> bool:
        return any(self._records[sid].status is StepStatus.PENDING for _, sid in self._ready)

    def _start_ready(self, spec: PipelineSpec, inputs: dict[str, Any]) -> None:
        """Start every ready step there is room for, in spec order, unless paused or failing."""
        if self._fatal is not None or self._paused or self._draining:
            return
        deferred = []
        busy = self._busy()  # counted once: with thousands of ready steps, per step is too slow
        while self._ready:
            entry = heapq.heappop(self._ready)
            step_id = entry[1]
            if self._records[step_id].status is not StepStatus.PENDING:
                continue  # cancelled while it waited its turn
            step = self._spec_steps[step_id]
            human = _is_human(step)
            if not human and busy >= spec.max_concurrency:
                deferred.append(entry)
                continue
            record = self._records[step_id]
            record.status = StepStatus.RUNNING
            record.started_at = workflow.now()
            self._running[step_id] = asyncio.create_task(self._run_step(spec, step, inputs))
            busy += 0 if human else 1
        for entry in deferred:
            heapq.heappush(self._ready, entry)

    def _should_wake(self) -> bool:
        if any(task.done() for task in self._running.values()) or self._fatal is not None:
            return True
        if not self._running and not self._has_ready():
            return True  # a cancelled pending step may have been the last one
        return (
            not self._paused
            and not self._draining  # no step starts before the hand-over
            and self._has_ready()
            and (self._busy() < self._spec.max_concurrency or self._human_ready())
        )

    def _human_ready(self) -> bool:
        return any(
            _is_human(self._spec_steps[sid]) and self._records[sid].status is StepStatus.PENDING
            for _, sid in self._ready
        )

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

    async def _cancel_all(self, reason: str) -> None:
        self._cancelling = True
        running = self._running
        for step_id in running:
            self._cancel_running(step_id)
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

    def _cancel_running(self, step_id: str) -> None:
        """Cancel a running step's task; an agent step's child workflow is told by its id too.

        The SDK cancels a child by the run id it started with, and Temporal drops that
        request once the child has continued as new (temporalio/features#503). A request
        by workflow id alone reaches the child's current run, whichever it is.
        """
        self._running[step_id].cancel()
        if isinstance(self._spec_steps[step_id], AgentStep) and workflow.patched(
            CANCEL_CHAIN_PATCH
        ):
            child = workflow.get_external_workflow_handle(_agent_workflow_id(step_id))

            async def cancel() -> None:
                try:
                    await child.cancel()
                except Exception:  # not started yet, or ended meanwhile: nothing to stop
                    workflow.logger.debug("agent step %r: no run to cancel", step_id)

            task = asyncio.create_task(cancel())
            self._chain_cancels.add(task)
            task.add_done_callback(self._chain_cancels.discard)

    # -- continuing as new ------------------------------------------------------

    def _continue_suggested(self) -> bool:
        """The server suggests a fresh history (it has grown long), and this run can hand over."""
        return (
            not self._carry_refused
            and workflow.info().is_continue_as_new_suggested()
            # Runs that went past the suggestion on older code replay as they ran.
            and workflow.patched(CONTINUE_AS_NEW_PATCH)
        )

    def _resume_waiting(self, spec: PipelineSpec, inputs: dict[str, Any]) -> None:
        """A continued run: the approval and input steps the run before left waiting wait on.

        One whose cancel request reached the run before too late to take effect there
        is cancelled here, as a step that never started would be.
        """
        for s in spec.steps:
            if not _is_human(s) or self._records[s.id].status not in (
                StepStatus.WAITING,
                StepStatus.RUNNING,
            ):
                continue
            if s.id in self._cancel_requests:
                self._records[s.id].waiting_for = None
                self._cancel_pending(s.id, self._cancel_requests[s.id])
                continue
            self._running[s.id] = asyncio.create_task(self._run_step(spec, s, inputs, resume=True))

    async def _continue_as_new(self, input: PipelineInput) -> None:
        """Hand the state over to a new run of the chain; returns only to take one more task.

        Called once only approval and input steps are left running: activities and
        child workflows belong to a run and cannot move. The waiting steps are
        carried with their records; an update accepted in this very task is answered
        first, in a task of its own (see `_answer_updates_before_closing`).
        """
        info = workflow.info()
        if workflow.all_handlers_finished() and self._update_task != (
            info.get_current_history_length()
        ):
            carried = self._carry()
            next_input = input.model_copy(update={"carried": carried})
            size = len(next_input.model_dump_json().encode())
            if size <= MAX_CARRIED_BYTES or input.payload_store:
                workflow.logger.info(
                    "continuing as new after %d events: run %d of the chain",
                    info.get_current_history_length(),
                    carried.runs + 1,
                )
                # Memo and search attributes carry over by default.
                workflow.continue_as_new(next_input)
            workflow.logger.warning(
                "not continuing as new: the run's state is %d bytes, over the %d a new run's "
                "input may take; the run goes on in this history",
                size,
                MAX_CARRIED_BYTES,
            )
            self._carry_refused = True
            self._draining = False
            return
        await self._answer_updates_before_closing()

    def _carry(self) -> PipelineCarry:
        return PipelineCarry(
            started_at=self._started_at,
            records=[r for r in self._ordered_records() if r.status is not StepStatus.PENDING],
            transcripts=self._transcripts,
            paused=self._paused,
            cancel_requests=self._cancel_requests,
            answers=self._answers,
            runs=self._runs_before + 1,
        )

    # -- one step -----------------------------------------------------------

    async def _run_step(
        self, spec: PipelineSpec, step: AnyStep, inputs: dict[str, Any], resume: bool = False
    ) -> None:
        record = self._records[step.id]
        try:
            try:
                output = await self._execute(spec, step, inputs, record, resume)
            except asyncio.CancelledError:
                if step.id in self._cancel_requests and not self._cancelling:
                    raise _StepFailed(
                        StepStatus.CANCELLED,
                        "the step was cancelled",
                        CANCELLED_BY_REQUEST,
                        record.attempts,
                    ) from None
                raise
        except _StepFailed as failed:
            record.status = failed.status
            record.error = failed.message
            record.error_type = failed.error_type
            record.attempts = failed.attempts
            record.ended_at = workflow.now()
            record.waiting_for = None
            if failed.status is StepStatus.CANCELLED and step.id in self._cancel_requests:
                record.error = _cancel_message(self._cancel_requests[step.id])
                record.comment = self._cancel_requests[step.id]
            if failed.agent:
                record.model = failed.agent.get("model")
                record.usage = TokenUsage.model_validate(failed.agent.get("usage") or {})
                record.tool_calls = failed.agent.get("tool_calls")
            self._apply_on_failure(step, record)
            return
        record.status = StepStatus.SUCCEEDED
        record.output = output
        record.ended_at = workflow.now()
        record.waiting_for = None
        self._outputs[step.id] = output

    async def _execute(
        self,
        spec: PipelineSpec,
        step: AnyStep,
        inputs: dict[str, Any],
        record: StepRecord,
        resume: bool = False,
    ) -> Any:
        """Run the step by its kind; returns its output or raises `_StepFailed`.

        `resume`: an approval or input step the run before left waiting waits on.
        """
        if isinstance(step, AgentStep):
            record.max_model_calls = step.max_model_calls
            agent = await self._run_agent(spec, step, inputs)
            record.attempts = 1
            record.model = agent.model
            record.usage = agent.usage
            record.tool_calls = agent.tool_calls
            self._transcripts.extend(agent.transcript or [])
            return agent.output
        if isinstance(step, ToolStep):
            called = await self._call_tool(spec, step, inputs)
            record.attempts = called.attempt
            return called.output
        return await self._wait_for_person(step, inputs, record, resume)

    async def _wait_for_person(
        self,
        step: ApprovalStep | InputStep,
        inputs: dict[str, Any],
        record: StepRecord,
        resume: bool = False,
    ) -> Any:
        """An approval or input step: wait (durably, maybe for days) for someone's answer."""
        wanted: Literal["approval", "input"] = (
            "approval" if isinstance(step, ApprovalStep) else "input"
        )
        timeout = step.timeout
        if resume and timeout is not None and record.started_at is not None:
            # The run before asked already; the timeout still counts from when it did.
            timeout = record.started_at + timeout - workflow.now()
        if step.message is not None and record.message is None:
            try:
                declared = {d: self._outputs[d] for d in step.depends_on}
                record.message = str(render(step.message, inputs, declared))
            except TemplateError as err:
                raise _StepFailed(StepStatus.FAILED, str(err), INVALID_REFERENCE, 0) from None
        record.status = StepStatus.WAITING
        record.waiting_for = wanted
        self._publish()
        try:
            if timeout is not None and timeout <= timedelta(0):
                raise TimeoutError  # the deadline passed while the run continued as new
            await workflow.wait_condition(
                lambda: step.id in self._answers,
                timeout=timeout,
                timeout_summary=f"{step.id} · {wanted} timeout",
            )
        except TimeoutError:  # the builtin one: wait_condition's timer fired
            if step.id not in self._answers:  # an answer in the same task as the timer wins
                return self._timed_out(step, record)
        finally:
            record.waiting_for = None
        action, value = self._answers.pop(step.id)
        record.status = StepStatus.RUNNING
        if action == INPUT:
            return value
        record.comment = value
        if action == REJECT:
            raise _StepFailed(StepStatus.FAILED, _rejected_message(value), REJECTED, 0)
        return {"approved": True, "comment": value, "by": "user"}

    def _timed_out(self, step: ApprovalStep | InputStep, record: StepRecord) -> Any:
        after = _duration_text(step.timeout)
        if isinstance(step, ApprovalStep) and step.on_timeout == "approve":
            return {"approved": True, "comment": None, "by": "timeout"}
        if isinstance(step, ApprovalStep) and step.on_timeout == "reject":
            raise _StepFailed(
                StepStatus.FAILED, f"rejected: nobody decided within {after}", REJECTED, 0
            )
        what = "decision" if isinstance(step, ApprovalStep) else "input"
        raise _StepFailed(StepStatus.TIMED_OUT, f"no {what} within {after}", "Timeout", 0)

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
                    routing=self._routing,
                ),
                id=_agent_workflow_id(step.id),
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
                **tool_call_queue(self._routing, step.tool),
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError(str(err.cause)) from None  # we cancelled it
            raise _step_failure(err, retry) from None

    def _apply_on_failure(self, step: AnyStep, record: StepRecord) -> None:
        policy = step.on_failure
        if isinstance(policy, Fallback):
            record.status = StepStatus.SUCCEEDED
            record.used_fallback = True
            record.output = policy.fallback
            self._outputs[step.id] = policy.fallback
        elif policy == "fail" and self._fatal is None:
            self._fatal = step.id
        # "continue": the record stays failed; _settle skips its dependents.

    # -- the status query, control updates and signals -------------------------

    @workflow.query(name=STATUS_QUERY)
    def status(self) -> PipelineState:
        """Every step's record now, with counts and tokens so far (`temporal workflow query`)."""
        records = self._ordered_records()
        usage = TokenUsage()
        for record in records:
            usage = usage.plus(record.usage)
        return PipelineState(
            workflow_id=workflow.info().workflow_id,
            pipeline=self._spec.name,
            description=self._spec.description,
            status=self._run_status(),
            steps=records,
            counts=counts(records),
            usage=usage,
            started_at=self._started_at,
            as_of=workflow.now(),
            error=self._error,
        )

    @workflow.update(name=PAUSE)
    def pause(self) -> str:
        self._note_update()
        self._do_pause()
        return "paused: no new step starts; running steps finish"

    @pause.validator
    def _check_pause(self) -> None:
        requests.check_pause(self._paused, self._ended is not None)

    @workflow.update(name=RESUME)
    def resume(self) -> str:
        self._note_update()
        self._do_resume()
        return "resumed"

    @resume.validator
    def _check_resume(self) -> None:
        requests.check_resume(self._paused)

    @workflow.update(name=CANCEL_STEP)
    def cancel_step(self, request: StepRequest) -> str:
        self._note_update()
        self._do_cancel_step(request)
        return f"cancelled step {request.step!r}"

    @cancel_step.validator
    def _check_cancel_step(self, request: StepRequest) -> None:
        requests.check_cancel_step(self._records, request.step)
        if request.step in self._cancel_requests:
            requests.reject(f"step {request.step!r} is already being cancelled")

    @workflow.update(name=APPROVE)
    def approve(self, request: StepRequest) -> str:
        return self._answer(request.step, APPROVE, request.comment)

    @approve.validator
    def _check_approve(self, request: StepRequest) -> None:
        self._check_answer(request.step)
        requests.check_decision(self._spec_steps, self._records, request.step)

    @workflow.update(name=REJECT)
    def reject(self, request: StepRequest) -> str:
        return self._answer(request.step, REJECT, request.comment)

    @reject.validator
    def _check_reject(self, request: StepRequest) -> None:
        self._check_answer(request.step)
        requests.check_decision(self._spec_steps, self._records, request.step)

    @workflow.update(name=INPUT)
    def input(self, request: StepInput) -> str:
        return self._answer(request.step, INPUT, request.value)

    @input.validator
    def _check_input(self, request: StepInput) -> None:
        self._check_answer(request.step)
        requests.check_input(self._spec_steps, self._records, request.step, request.value)

    # The same requests as signals, for senders that cannot wait for an answer
    # (`temporal workflow signal`). A signal cannot be refused: one that fails the
    # update's check is logged and ignored.

    @workflow.signal(name=PAUSE)
    def pause_signal(self) -> None:
        if self._accepts(PAUSE, self._check_pause):
            self._do_pause()

    @workflow.signal(name=RESUME)
    def resume_signal(self) -> None:
        if self._accepts(RESUME, self._check_resume):
            self._do_resume()

    @workflow.signal(name=CANCEL_STEP)
    def cancel_step_signal(self, request: StepRequest) -> None:
        if self._accepts(CANCEL_STEP, lambda: self._check_cancel_step(request)):
            self._do_cancel_step(request)

    @workflow.signal(name=APPROVE)
    def approve_signal(self, request: StepRequest) -> None:
        if self._accepts(APPROVE, lambda: self._check_approve(request)):
            self._answer(request.step, APPROVE, request.comment)

    @workflow.signal(name=REJECT)
    def reject_signal(self, request: StepRequest) -> None:
        if self._accepts(REJECT, lambda: self._check_reject(request)):
            self._answer(request.step, REJECT, request.comment)

    @workflow.signal(name=INPUT)
    def input_signal(self, request: StepInput) -> None:
        if self._accepts(INPUT, lambda: self._check_input(request)):
            self._answer(request.step, INPUT, request.value)

    @workflow.signal(name=STEP_PROGRESS)
    def step_progress(self, progress: StepProgress) -> None:
        """Stepflow's own reports: an agent step's model call starting, an activity retrying."""
        record = self._records.get(progress.step)
        if record is None or record.status not in (StepStatus.RUNNING, StepStatus.RETRYING):
            return  # late: the step has ended
        if progress.model_call is not None:
            if progress.model_call < (record.model_call or 0):
                return  # a retry report of an earlier call, overtaken by the next call
            if progress.model_call > (record.model_call or 0):
                record.model_call = progress.model_call
                record.status = StepStatus.RUNNING
                record.attempts = 1
        if progress.usage is not None:
            record.usage = progress.usage
        if progress.tool_calls is not None:
            record.tool_calls = progress.tool_calls
        if progress.attempt is not None:
            record.attempts = progress.attempt
            record.status = StepStatus.RETRYING if progress.attempt > 1 else StepStatus.RUNNING
        self._publish()

    def _answer(self, step_id: str, action: str, value: Any) -> str:
        """Hand a waiting step its answer; `_wait_for_person` picks it up."""
        self._note_update()
        self._answers[step_id] = (action, value)
        done = {APPROVE: "approved", REJECT: "rejected", INPUT: "gave input to"}[action]
        return f"{done} step {step_id!r}"

    def _note_update(self) -> None:
        self._update_task = workflow.info().get_current_history_length()

    async def _answer_updates_before_closing(self) -> None:
        """Every handler finishes, and an update's answer never rides on the closing task.

        If the task that closes the run also accepted an update, and an event arrives
        meanwhile (the activity a `cancel_step` stopped completing after all), the server
        refuses the whole task and drops the update, whose sender then gets an error
        instead of an answer. A 1 ms timer gives the answer a task of its own.
        """
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._update_task == workflow.info().get_current_history_length():
            await workflow.sleep(timedelta(milliseconds=1), summary="answer updates first")

    def _check_answer(self, step_id: str) -> None:
        if step_id in self._answers:
            requests.reject(f"step {step_id!r} has already been answered")

    def _accepts(self, name: str, check: Any) -> bool:
        try:
            check()
        except Exception as err:  # a signal can only be ignored: never fail the task over one
            message = err.message if isinstance(err, ApplicationError) else repr(err)
            workflow.logger.warning("ignored signal %r: %s", name, message)
            return False
        return True

    def _do_pause(self) -> None:
        self._paused = True
        self._publish()

    def _do_resume(self) -> None:
        self._paused = False
        self._publish()

    def _do_cancel_step(self, request: StepRequest) -> None:
        step_id = request.step
        self._cancel_requests[step_id] = request.comment
        if step_id in self._running:
            self._cancel_running(step_id)  # _run_step records it and applies on_failure
            return
        self._cancel_pending(step_id, request.comment)

    def _cancel_pending(self, step_id: str, comment: str | None) -> None:
        """Not started yet: it never will. on_failure decides what its dependents do."""
        record = self._records[step_id]
        record.status = StepStatus.CANCELLED
        record.error = _cancel_message(comment)
        record.error_type = CANCELLED_BY_REQUEST
        record.comment = comment
        record.ended_at = workflow.now()
        self._apply_on_failure(self._spec_steps[step_id], record)
        self._settle(step_id)
        self._publish()

    # -- what the Web UI and visibility show -------------------------------------

    def _ordered_records(self) -> list[StepRecord]:
        return [self._records[s.id] for s in self._spec.steps]

    def _run_status(self) -> RunStatus:
        return self._ended or live_status(self._ordered_records(), self._paused)

    def _start_visibility(self, spec: PipelineSpec) -> None:
        """Memo for runs started without one; search attributes only where the start set them.

        Upserting an attribute the namespace has not registered fails the workflow
        task, so the workflow keeps `StepflowStatus` current only when the run was
        started with `StepflowPipeline` set: proof that both are registered.
        """
        if workflow.memo_value("pipeline", None) is None:
            workflow.upsert_memo({"pipeline": spec.name, "description": spec.description or ""})
        attributes = workflow.info().typed_search_attributes
        self._keep_attributes = attributes.get(PIPELINE_ATTRIBUTE) is not None
        published = attributes.get(STATUS_ATTRIBUTE)
        self._published = RunStatus(published) if published in set(RunStatus) else None

    def _publish(self) -> None:
        """Refresh the current details and, when it changed, the StepflowStatus attribute."""
        status = self._run_status()
        records = self._ordered_records()
        workflow.set_current_details(
            details_markdown(self._spec.name, status, records, workflow.now())
        )
        self._step_counter.count(records)  # a metric, not a command: history is the same
        if self._keep_attributes and status != self._published:
            workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set(status.value)])
            self._published = status

    def _end(self, status: RunStatus, error: str | None) -> None:
        self._ended = status
        self._error = error
        self._publish()

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


def _agent_workflow_id(step_id: str) -> str:
    """The id of an agent step's child workflow: `<pipeline's workflow id>/<step id>`."""
    return f"{workflow.info().workflow_id}/{step_id}"


def _is_human(step: AnyStep) -> bool:
    return isinstance(step, ApprovalStep | InputStep)


def _cancel_message(comment: str | None) -> str:
    return "cancelled on request" + (f": {comment}" if comment else "")


def _rejected_message(comment: str | None) -> str:
    return "rejected" + (f": {comment}" if comment else "")


def _duration_text(value: timedelta | None) -> str:
    if value is None:
        return "the timeout"
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{value.total_seconds():g}s"
