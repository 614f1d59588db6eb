"""`PipelineWorkflow`: runs a pipeline's DAG; the shell around the parts that do the work.

- `scheduler.DagScheduler` decides which steps start and what a settled step
  means for its dependents;
- `run_state.RunState` is everything the run remembers, and what it hands over
  when it continues as new;
- `steps` runs one step by its kind (a tool is one activity, an agent a child
  workflow, an approval or input step waits for a person);
- `run_control` is the table of updates and signals that steer the run;
- `errors` says how a failure ends a step.

- `handover` says when a long run continues as new, `visibility` what it shows,
  `run_budget` what the run does with its budget.

This module keeps the run loop and the handlers. Temporal keeps the workflow, so
a crashed worker costs nothing but the attempt that was running.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import workflow

from stepflow.workflows import models, run_control
from stepflow.workflows.control import (
    STATUS_QUERY,
    STEP_PROGRESS,
    PipelineState,
    RunStatus,
    StepProgress,
)
from stepflow.workflows.errors import (
    CheckedPipelineInput,
    ErrorType,
    InvalidWorkflowInput,
    StepFailure,
)
from stepflow.workflows.handover import Handover
from stepflow.workflows.models import (
    AgentStep,
    Fallback,
    PipelineResult,
    PipelineStatus,
    StepRecord,
    StepStatus,
)
from stepflow.workflows.run_budget import RunBudget
from stepflow.workflows.run_result import reused, run_result
from stepflow.workflows.run_state import RunState, cancel_message
from stepflow.workflows.run_view import (
    counts,
    live_status,
    summarised,
    total_usage,
    usage_by_model,
)
from stepflow.workflows.scheduler import DagScheduler, Node
from stepflow.workflows.steps import (
    FOR_EACH,
    HUMAN_KINDS,
    RUNNERS,
    AnyStep,
    StepContext,
    StepRunner,
    per_item_condition,
)
from stepflow.workflows.steps.agent import agent_workflow_id
from stepflow.workflows.steps.children import PIPELINE_WORKFLOW as _CHILD_TYPE
from stepflow.workflows.validation import (
    SpecError,
    check_pipeline,
    outside_output_schema_refs,
    resolve_inputs,
)
from stepflow.workflows.visibility import RunVisibility

PIPELINE_WORKFLOW = "stepflow_pipeline"
assert PIPELINE_WORKFLOW == _CHILD_TYPE  # loops and sub-pipelines start children of this type
# The error types callers know by these names (`errors.ErrorType` has them all).
INVALID_PIPELINE = ErrorType.INVALID_PIPELINE
PIPELINE_FAILED = ErrorType.PIPELINE_FAILED
INVALID_REFERENCE = ErrorType.INVALID_REFERENCE
REJECTED = ErrorType.REJECTED
CANCELLED_BY_REQUEST = ErrorType.CANCELLED

SCHEMA_REFS_PATCH = "refuse-output-schema-refs-outside"
"""Runs started before an `output_schema` `$ref` outside it was refused replay without the check."""

CANCEL_CHAIN_PATCH = "cancel-agent-step-chain"
"""Runs that cancelled an agent step before this code replay without the second request."""

if TYPE_CHECKING:
    PipelineInput = models.PipelineInput
else:
    # The SDK reads the input by the annotation: an input that is no pipeline fails the run.
    PipelineInput = CheckedPipelineInput


@workflow.defn(name=PIPELINE_WORKFLOW, failure_exception_types=[InvalidWorkflowInput])
class PipelineWorkflow:
    """One run of a pipeline. Input `PipelineInput`, result `PipelineResult`.

    A pipeline that fails (a step with `on_failure: fail` failed for good)
    fails the workflow with an `ApplicationError` of type `PipelineFailed`
    whose first detail is the `PipelineResult`, so the Web UI shows the run as
    failed and clients still get every step's record.

    While it runs it answers the `status` query and the control updates and
    signals of `workflows.control` (registered from `run_control.OPERATIONS`).
    """

    runners: dict[str, StepRunner] = RUNNERS
    """The runner of each step kind."""

    @workflow.init
    def __init__(self, input: PipelineInput) -> None:
        # Built from the input before anything else runs, so a query or an update that
        # arrives with the run's first task already finds every step.
        spec = input.spec
        self.spec = spec
        self.steps: dict[str, AnyStep] = {s.id: s for s in spec.steps}
        self.state = RunState.begin(
            ((s.id, s.kind) for s in spec.steps), input.carried, workflow.now(), reused(input)
        )
        self._scope = input.scope
        self._rerun_of = input.reuse.source if input.reuse else None
        self._scheduler = DagScheduler(
            [
                # A child run's steps may also depend on its parent's: those have settled.
                Node(
                    s.id,
                    [d for d in s.depends_on if d in self.steps],
                    s.kind in HUMAN_KINDS,
                    s.trigger,
                )
                for s in spec.steps
            ],
            spec.max_concurrency,
            # A step a rerun took over counts as succeeded for its dependents.
            {
                r.id: StepStatus.SUCCEEDED if r.status is StepStatus.REUSED else r.status
                for r in self.state.records
            },
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        """The running steps."""
        self._chain_cancels: set[asyncio.Task[None]] = set()
        """Cancel requests sent to agent steps' current runs, until Temporal has them."""
        self._fatal: str | None = None
        self._cancelling = False
        """Set once the pipeline cancels its steps; a cancel from outside fails just one step."""
        self._handover = Handover()
        self._ended: RunStatus | None = None
        self._error: str | None = None
        self._update_task: int | None = None
        """History length of the workflow task that last accepted an update."""
        self._routing = input.routing
        self._payload_store = input.payload_store
        self._visibility = RunVisibility(spec, self.state)
        run_control.register(
            self
        )  # before any handler runs: a cancel_step in the first task settles
        self._budget = RunBudget(spec, self.state)

    @workflow.run
    async def run(self, input: PipelineInput) -> PipelineResult:
        spec = input.spec
        self._visibility.start(spec)
        try:
            # Only a spec that has such a `$ref` asks: a patch marker costs every run events.
            refuse_refs = outside_output_schema_refs(spec) and workflow.patched(SCHEMA_REFS_PATCH)
            scope = self._scope
            if input.carried is None:
                inputs = check_pipeline(
                    spec,
                    input.inputs,
                    output_schema_refs=refuse_refs,
                    outside=tuple(scope.outputs) if scope else (),
                    in_loop=scope is not None and scope.loop is not None,
                )
            else:
                # The chain's first run checked this very spec: a continued run of 10,000
                # steps checking it again took 610 ms of its first workflow task.
                inputs = resolve_inputs(spec, input.inputs)
        except SpecError as err:
            # A user mistake never heals: fail the run now instead of retrying the task.
            message = f"invalid pipeline {spec.name!r}:\n{err}"
            self._end(RunStatus.FAILED, message)
            raise ErrorType.INVALID_PIPELINE.error(message) from None

        ctx = StepContext(
            spec,
            inputs,
            self.state,
            self._routing,
            self.publish,
            self._is_cancelling,
            payload_store=self._payload_store,
            outside=dict(self._scope.outputs) if self._scope else {},
            outside_skipped=frozenset(self._scope.skipped) if self._scope else frozenset(),
            loop=self._scope.loop if self._scope else None,
            reuse_inside=dict(input.reuse.inside) if input.reuse else {},
            no_cache=input.no_cache,
            budgets=self._budget.ledgers(input.budgets),
            waits_for_person=self._scheduler.wait_for_person,
            answered=self._scheduler.answered,
        )
        try:
            self._resume_waiting(ctx)
            while True:
                self._start_ready(ctx)
                self.publish()
                if not self._tasks and (self._fatal is not None or not self._scheduler.has_ready()):
                    break
                if self._handover.draining and self._scheduler.busy == 0 and self._fatal is None:
                    await self._continue_as_new(input)  # returns if it must wait a task first
                else:
                    await workflow.wait_condition(self._should_wake)
                for step_id in [sid for sid, task in self._tasks.items() if task.done()]:
                    self._tasks.pop(step_id).result()
                    self._settle(step_id)
                if self._fatal is not None:
                    await self._cancel_all(f"pipeline failed at step {self._fatal!r}")
                elif not self._handover.draining and self._handover.suggested():
                    self._handover.begin(self._slot_takers())
        except asyncio.CancelledError:
            await self._cancel_all("pipeline was cancelled")
            self._end(RunStatus.CANCELLED, "the run was cancelled")
            await self._budget.close()
            await self._answer_updates_before_closing()
            raise

        result = self._result(ctx)
        self._end(
            RunStatus.FAILED if result.status is PipelineStatus.FAILED else RunStatus.SUCCEEDED,
            result.error,
        )
        await self._budget.close()
        await self._answer_updates_before_closing()
        if result.status is PipelineStatus.FAILED:
            raise ErrorType.PIPELINE_FAILED.error(
                result.error or "pipeline failed", result.model_dump(mode="json")
            )
        return result

    # -- scheduling -------------------------------------------------------------------

    def _start_ready(self, ctx: StepContext) -> None:
        """Start every ready step there is room for, in spec order, unless paused or failing."""
        if self._fatal is not None or self.state.paused:
            return
        if not self._handover.lets_steps_start(self._tasks):
            return
        for step_id in self._scheduler.start_ready():
            record = self.state.record(step_id)
            self.state.set_status(record, StepStatus.RUNNING)
            record.started_at = workflow.now()
            self._tasks[step_id] = asyncio.create_task(self._run_step(ctx, self.steps[step_id]))

    def _should_wake(self) -> bool:
        if any(task.done() for task in self._tasks.values()) or self._fatal is not None:
            return True
        if not self._tasks and not self._scheduler.has_ready():
            return True  # a cancelled pending step may have been the last one
        return (
            not self.state.paused
            and self._scheduler.can_start()
            and self._handover.lets_steps_start(self._tasks)
        )

    def _settle(self, step_id: str) -> None:
        """After a step ended: release its dependents, or skip them if it did not succeed."""
        for skipped, reason in self._scheduler.settle(step_id, self.state.record(step_id).status):
            record = self.state.record(skipped)
            self.state.set_status(record, StepStatus.SKIPPED)
            record.reason = reason

    def _slot_takers(self) -> list[str]:
        """Running steps that are not waiting for a person."""
        away = self._scheduler.away
        return [
            sid
            for sid in self._tasks
            if sid not in away and self.steps[sid].kind not in HUMAN_KINDS
        ]

    def _is_cancelling(self) -> bool:
        return self._cancelling

    async def _cancel_all(self, reason: str) -> None:
        self._cancelling = True
        for step_id in self._tasks:
            self._cancel_running(step_id)
        for step_id, task in list(self._tasks.items()):
            try:
                await task
            except asyncio.CancelledError:
                record = self.state.record(step_id)
                self.state.set_status(record, StepStatus.CANCELLED)
                record.reason = reason
                record.ended_at = workflow.now()
        self._tasks.clear()
        for step_id in self._scheduler.stop():
            record = self.state.record(step_id)
            self.state.set_status(record, StepStatus.SKIPPED)
            record.reason = reason

    def _cancel_running(self, step_id: str) -> None:
        """Cancel a running step's task; an agent step's child workflow is told by its id too.

        The SDK cancels a child by the run id it started with, and Temporal drops that
        request once the child has continued as new (temporalio/features#503). A request
        by workflow id alone reaches the child's current run, whichever it is.
        """
        self._tasks[step_id].cancel()
        step = self.steps[step_id]
        # An inline agent step has no child: cancelling its task cancels its activities.
        if isinstance(step, AgentStep) and not step.inline and workflow.patched(CANCEL_CHAIN_PATCH):
            child = workflow.get_external_workflow_handle(agent_workflow_id(step_id))

            async def cancel() -> None:
                try:
                    await child.cancel()
                except Exception:  # not started yet, or ended meanwhile: nothing to stop
                    workflow.logger.debug("agent step %r: no run to cancel", step_id)

            task = asyncio.create_task(cancel())
            self._chain_cancels.add(task)
            task.add_done_callback(self._chain_cancels.discard)

    # -- one step ---------------------------------------------------------------------

    async def _run_step(self, ctx: StepContext, step: AnyStep, resume: bool = False) -> None:
        record = self.state.record(step.id)
        try:
            try:
                if step.when is not None and not per_item_condition(step):
                    if not ctx.condition(step, step.when):
                        self.state.set_status(record, StepStatus.SKIPPED)
                        record.reason = "condition false"
                        record.ended_at = workflow.now()
                        return
                if getattr(step, "for_each", None) is not None:
                    batch = self._scope.items if self._scope else None
                    offset = self._scope.offset if self._scope else 0
                    output = await FOR_EACH.run(ctx, step, record, batch, offset)
                else:
                    output = await self.runners[step.kind].run(ctx, step, record, resume)
            except asyncio.CancelledError:
                if step.id in self.state.cancel_requests and not self._cancelling:
                    raise StepFailure(
                        ErrorType.CANCELLED, "the step was cancelled", record.attempts
                    ) from None
                raise
        except StepFailure as failed:
            self.state.fail(record, failed)
            record.ended_at = workflow.now()
            self._apply_on_failure(step, record)
            return
        self.state.succeed(record, output)
        record.ended_at = workflow.now()
        record.waiting_for = None

    def _apply_on_failure(self, step: AnyStep, record: StepRecord) -> None:
        policy = step.on_failure
        if isinstance(policy, Fallback):
            record.used_fallback = True
            self.state.succeed(record, policy.fallback)
        elif policy == "fail" and self._fatal is None:
            self._fatal = step.id
            self._scheduler.halt()
        # "continue": the record stays failed; _settle skips its dependents.

    # -- run control (`run_control` registers the updates and signals) -------------------

    @property
    def ended(self) -> bool:
        return self._ended is not None

    def note_update(self) -> None:
        self._update_task = workflow.info().get_current_history_length()

    def cancel_step(self, step_id: str, comment: str | None) -> None:
        self.state.cancel_requests[step_id] = comment
        if step_id in self._tasks:
            self._cancel_running(step_id)  # _run_step records it and applies on_failure
            return
        self._cancel_pending(step_id, comment)

    def _cancel_pending(self, step_id: str, comment: str | None) -> None:
        """Not started yet: it never will. on_failure decides what its dependents do."""
        record = self.state.record(step_id)
        self.state.set_status(record, StepStatus.CANCELLED)
        record.error = cancel_message(comment)
        record.error_type = str(ErrorType.CANCELLED)
        record.comment = comment
        record.ended_at = workflow.now()
        self._apply_on_failure(self.steps[step_id], record)
        self._settle(step_id)
        self.publish()

    @workflow.query(name=STATUS_QUERY)
    def status(self) -> PipelineState:
        """Every step's record now, with counts and tokens so far (`temporal workflow query`)."""
        records = self.state.records
        return PipelineState(
            workflow_id=workflow.info().workflow_id,
            pipeline=self.spec.name,
            description=self.spec.description,
            status=self._run_status(),
            # With a payload store the answer is kept there as any payload is; without one
            # it travels inline, so large outputs are summarised (`result` has them whole).
            steps=list(records) if self._payload_store else summarised(records),
            counts=counts(records),
            usage=total_usage(records),
            started_at=self.state.started_at,
            as_of=workflow.now(),
            error=self._error,
            usage_by_model=usage_by_model(records),
            budget=self._budget.spent(),
        )

    @workflow.signal(name=STEP_PROGRESS)
    def step_progress(self, progress: StepProgress) -> None:
        """Stepflow's own reports: an agent step's model call starting, an activity retrying."""
        if self.state.take_progress(progress):
            self.publish()

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

    # -- continuing as new --------------------------------------------------------------

    def _resume_waiting(self, ctx: StepContext) -> None:
        """A continued run: the approval and input steps, and the plans waiting for approval,
        that the run before left waiting wait on.

        One whose cancel request reached the run before too late to take effect there
        is cancelled here, as a step that never started would be.
        """
        for s in ctx.spec.steps:
            record = self.state.record(s.id)
            # A plan waiting for approval is handed over too (`steps.plan`), its plan made.
            away = (
                s.kind == "plan" and record.status is StepStatus.WAITING and record.plan is not None
            )
            if not away and (
                s.kind not in HUMAN_KINDS
                or record.status not in (StepStatus.WAITING, StepStatus.RUNNING)
            ):
                continue
            if s.id in self.state.cancel_requests:
                record.waiting_for = None
                self._cancel_pending(s.id, self.state.cancel_requests[s.id])
                continue
            self._scheduler.resume(s.id, away=away)
            self._tasks[s.id] = asyncio.create_task(self._run_step(ctx, s, resume=True))

    async def _continue_as_new(self, input: PipelineInput) -> None:
        """Hand the state over to a new run of the chain; returns only to take one more task.

        Called once only approval and input steps are left running: activities and
        child workflows belong to a run and cannot move. The waiting steps are
        carried with their records; an update accepted in this very task is answered
        first, in a task of its own (see `_answer_updates_before_closing`).
        """
        if workflow.all_handlers_finished() and self._update_task != (
            workflow.info().get_current_history_length()
        ):
            self._handover.hand_over(input, self.state)
            return
        await self._answer_updates_before_closing()

    # -- what the Web UI and visibility show ----------------------------------------------

    def _run_status(self) -> RunStatus:
        return self._ended or live_status(self.state.count(StepStatus.WAITING), self.state.paused)

    def publish(self) -> None:
        self._visibility.publish(self._run_status())
        if self.spec.budget is not None:
            # The spend goes under the details' heading: `budget: $0.42 of $2.50 · ...`.
            heading, _, rest = workflow.get_current_details().partition("\n")
            workflow.set_current_details(f"{heading}\n\n{self._budget.spend_line()}\n{rest}")

    def _end(self, status: RunStatus, error: str | None) -> None:
        self._ended = status
        self._error = error
        self.publish()

    def _result(self, ctx: StepContext) -> PipelineResult:
        failed = self.state.record(self._fatal) if self._fatal is not None else None
        return run_result(
            self.spec, self.state, ctx, failed, self._rerun_of, workflow.now(), self._budget.spent()
        )
