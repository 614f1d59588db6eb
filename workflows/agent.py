"""`AgentStepWorkflow`: one agent step, a child of the pipeline.

The loop: model call (activity `model_call`) -> the tool calls it asked for
(one activity each, `tool_<name>`, in parallel unless the step says
sequential) -> the next model call with their results, until the model gives
a final answer or the step has made `max_model_calls` calls. The conversation
lives in this workflow's state, so a crashed worker resumes it from history
instead of starting the step over.

A long loop continues as new between model calls when the server suggests it,
carrying the conversation; the pipeline waiting on this child sees only the
final result of the chain.

A step whose `model` is a chain (`[primary, backup, local]`) makes each model
call with the first model still in the running; when its activity fails for
good in a way another model may get past, the next model takes over (see
`_call_chain`). A step with one model schedules exactly what it always did.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from stepflow.workflows.activity_options import activity_options, local_activity_options
from stepflow.workflows.control import (
    AGENT_PROGRESS_QUERY,
    STEP_PROGRESS,
    AgentProgress,
    StepProgress,
)
from stepflow.workflows.conversation import (
    MAX_CONVERSATION_BYTES,
    conversation_size,
    first_user_message,
    plan_repair_request,
    repair_request,
    tool_error,
    tool_result,
)
from stepflow.workflows.errors import (
    ErrorType,
    InvalidWorkflowInput,
    StepFailure,
    activity_failure,
)
from stepflow.workflows.models import (
    AGENT_STEP_WORKFLOW,
    MODEL_CALL_ACTIVITY,
    AgentLoopState,
    AgentStepInput,
    AgentStepResult,
    ChatMessage,
    ModelCallInput,
    ModelCallOutput,
    PassedOver,
    PlannedToolCall,
    RetrySpec,
    ToolCallInput,
    ToolCallOutput,
    add_by_model,
    model_call_queue,
    tool_activity_name,
    tool_call_queue,
)
from stepflow.workflows.step_settings import chain_retry, fallback_attempts, model_chain

PROGRESS_PATCH = "report-progress-to-pipeline"
"""Runs recorded before agent steps reported their progress replay without those signals."""

PROGRESS_BY_QUERY_PATCH = "agent-progress-by-query"
"""From here on the step answers a query instead of signalling its pipeline at every model
call (a signal cost the pipeline two events and a workflow task each); runs recorded before
replay with their signals."""

CONTINUE_AS_NEW_PATCH = "agent-continue-as-new-when-suggested"
"""Loops that went past the server's suggestion before this code replay without continuing."""

BOUNDED_TOOL_CALLS_PATCH = "bounded-parallel-tool-calls"
"""Replies of more tool calls than the bound, recorded before it, replay scheduling all at once."""

MAX_PARALLEL_TOOL_CALLS = 500
"""Tool calls of one reply running at once: Temporal allows 2,000 pending activities a workflow."""

# The error types callers know by these names (`errors.ErrorType` has them all).
MAX_MODEL_CALLS_EXCEEDED = ErrorType.MAX_MODEL_CALLS_EXCEEDED
OUTPUT_INVALID = ErrorType.OUTPUT_SCHEMA_MISMATCH
CONVERSATION_TOO_LARGE = ErrorType.CONVERSATION_TOO_LARGE

FALLBACK_AFTER_ATTEMPTS = frozenset(
    {
        ErrorType.MODEL_RATE_LIMITED,
        ErrorType.MODEL_SERVER_ERROR,
        ErrorType.MODEL_TIMEOUT,
        ErrorType.MODEL_CONNECTION_ERROR,
        ErrorType.MODEL_REPLY_INVALID,
        ErrorType.TIMEOUT,  # Temporal's own timeouts of the call
    }
)
"""A model of a chain that still fails like this after `after_attempts` attempts is passed
over for this call; the next call tries it again (the trouble may have passed)."""

FALLBACK_AT_ONCE = frozenset(
    {
        ErrorType.MODEL_NOT_FOUND,
        ErrorType.MODEL_CONTEXT_EXCEEDED,
        ErrorType.MODEL_CONTENT_REFUSED,
        ErrorType.MODEL_NOT_CONFIGURED,
    }
)
"""Failures no retry fixes for this model but another model may: the next takes over after
one attempt, and this model sits out the step's later calls (the conversation only grows,
and an unknown model stays unknown). Every other failure (a rejected request, a spent
budget, a conversation too large for any call, the payload store, a model without the
price a cost budget needs: a configuration to fix, not to route around) fails the step as
it would without a chain."""

MAX_PASSED_OVER_ERROR = 500
"""Characters of a passed-over model's error kept in the loop's state and the step record."""


# Its input comes from the pipeline, never from a person: one that fails to parse is a
# deploy's mismatch, and the task waits for a worker that reads it.
@workflow.defn(name=AGENT_STEP_WORKFLOW, failure_exception_types=[InvalidWorkflowInput])
class AgentStepWorkflow:
    """Input `AgentStepInput`, result `AgentStepResult`.

    A step that fails for good fails this workflow with an `ApplicationError`
    whose first detail holds the model and token usage so far, so the
    pipeline's record counts the tokens of failed steps too.
    """

    def __init__(self) -> None:
        self._loop = AgentLoopState(messages=[], next_call=1, transcript_start=1, runs=0)
        """The loop's whole state; continue-as-new hands it over as it is."""
        self._reports: set[asyncio.Task[None]] = set()
        self._max_model_calls = 0
        self._attempt: int | None = None
        """A call retrying now (its activity reports each attempt after the first)."""
        self._by_query = False
        """Progress is read by query, not signalled to the pipeline (`PROGRESS_BY_QUERY_PATCH`)."""
        self._trying: str | None = None
        """With a model chain: the model the current call is asking."""

    @workflow.query(name=AGENT_PROGRESS_QUERY)
    def progress(self) -> AgentProgress:
        """Where the loop is: `stepflow status` and `watch` show it on the pipeline's record."""
        loop = self._loop
        return AgentProgress(
            model_call=max(loop.next_call, 1),
            max_model_calls=self._max_model_calls,
            usage=loop.usage,
            tool_calls=loop.tool_calls,
            model=loop.model,
            attempt=self._attempt,
        )

    @workflow.signal(name=STEP_PROGRESS)
    def retrying(self, progress: StepProgress) -> None:
        """A call's activity retrying (only retries signal): the query and details say so."""
        if progress.attempt is not None:
            self._attempt = progress.attempt if progress.attempt > 1 else None
            self._show()

    def _show(self) -> None:
        """The Web UI's current details of this step: its call, tokens and tool calls so far."""
        loop = self._loop
        retrying = f" · RETRYING (attempt {self._attempt})" if self._attempt else ""
        trying = f" · {self._trying}" if self._trying else ""
        workflow.set_current_details(
            f"model call {max(loop.next_call, 1)}/{self._max_model_calls}{trying}{retrying} · "
            f"{loop.usage.total_tokens:,} tokens · {loop.tool_calls} tool calls"
        )

    @workflow.run
    async def run(self, input: AgentStepInput) -> AgentStepResult:
        step = input.step
        self._max_model_calls = step.max_model_calls
        self._by_query = workflow.patched(PROGRESS_BY_QUERY_PATCH)
        if input.carried is None:
            self._loop = AgentLoopState(
                messages=[
                    {"role": "system", "content": input.instructions},
                    *input.history,
                    first_user_message(input.input, input.context),
                ],
                next_call=1,
                transcript_start=1 + len(input.history),
                runs=0,
            )
        else:
            self._loop = input.carried.model_copy(update={"messages": list(input.carried.messages)})
        loop = self._loop
        first = loop.next_call
        for number in range(first, step.max_model_calls + 1):
            loop.next_call = number
            if number > first and self._continue_suggested():
                await self._continue_as_new(input)
            reply = await self._call_model(input, number)
            loop.messages.append(reply.message)
            if reply.tool_calls:
                if number < step.max_model_calls:
                    loop.messages.extend(await self._run_tools(input, number, reply.tool_calls))
                continue
            if reply.output_error is None:
                return AgentStepResult(
                    output=reply.output,
                    model=reply.model,
                    usage=loop.usage,
                    tool_calls=loop.tool_calls,
                    repairs=loop.repairs,
                    transcript=(
                        loop.messages[loop.transcript_start :] if input.keep_transcript else None
                    ),
                    usage_by_model=loop.usage_by_model or None,
                    passed_over=loop.passed_over or None,
                )
            repairs = f"{loop.repairs} repair{'s' if loop.repairs != 1 else ''}"
            if loop.repairs == step.max_output_repairs and input.plan is not None:
                self._fail(
                    f"the plan is still invalid after {repairs}: {reply.output_error}",
                    ErrorType.PLAN_INVALID,
                )
            if loop.repairs == step.max_output_repairs:
                self._fail(
                    f"the answer does not match the output schema after {repairs}: "
                    f"{reply.output_error}",
                    ErrorType.OUTPUT_SCHEMA_MISMATCH,
                )
            loop.repairs += 1
            loop.messages.append(
                repair_request(reply.output_error)
                if input.plan is None
                else plan_repair_request(reply.output_error)
            )
        self._fail(
            f"no final answer after {step.max_model_calls} model calls "
            f"(max_model_calls: {step.max_model_calls})",
            ErrorType.MAX_MODEL_CALLS_EXCEEDED,
        )

    def _continue_suggested(self) -> bool:
        """The server suggests a fresh history, and the conversation can be handed over.

        An oversized conversation is not: the next model call fails it clearly instead.
        """
        return (
            workflow.info().is_continue_as_new_suggested()
            and conversation_size(self._unstored()) <= MAX_CONVERSATION_BYTES
            and workflow.patched(CONTINUE_AS_NEW_PATCH)
        )

    async def _continue_as_new(self, input: AgentStepInput) -> NoReturn:
        """Go on in a new run with the loop state so far; its `next_call` is next."""
        await workflow.wait_condition(lambda: not self._reports)  # progress reports sent
        loop = self._loop
        carried = loop.model_copy(update={"runs": loop.runs + 1})
        if loop.stored and not input.keep_transcript:
            # The stored messages stay behind: the next run names them, as calls do.
            carried = carried.model_copy(
                update={"messages": self._unstored(), "offset": loop.stored_count}
            )
        workflow.logger.info(
            "continuing as new before model call %d: run %d of the chain",
            carried.next_call,
            carried.runs + 1,
        )
        # The conversation holds the instructions, history, context and input: not sent twice.
        workflow.continue_as_new(
            input.model_copy(
                update={
                    "instructions": "",
                    "history": [],
                    "context": {},
                    "input": None,
                    "carried": carried,
                }
            )
        )

    def _unstored(self) -> list[ChatMessage]:
        """The messages no worker has stored yet: what the next call carries in history."""
        loop = self._loop
        return loop.messages[loop.stored_count - loop.offset :] if loop.stored else loop.messages

    def _fail(self, message: str, error_type: str) -> NoReturn:
        """Fail the step for good; the details give the pipeline the model and tokens so far."""
        loop = self._loop
        details: dict[str, Any] = {
            "model": loop.model,
            "usage": loop.usage.model_dump(),
            "tool_calls": loop.tool_calls,
        }
        if loop.usage_by_model:
            details["usage_by_model"] = {
                model: usage.model_dump() for model, usage in loop.usage_by_model.items()
            }
        if loop.passed_over:
            details["passed_over"] = [passed.model_dump() for passed in loop.passed_over]
        raise ApplicationError(message, details, type=str(error_type), non_retryable=True)

    def _pipeline_id(self) -> str | None:
        parent = workflow.info().parent
        return parent.workflow_id if parent else None

    def _report_to(self) -> str | None:
        """Where a retrying activity reports: this workflow (`retrying`), or the pipeline."""
        return workflow.info().workflow_id if self._by_query else self._pipeline_id()

    def _report_progress(self, progress: StepProgress) -> None:
        """Tell the pipeline which model call is starting, for its `status` query.

        Fire and forget: the signal goes out with the activity's command in the same
        workflow task, so the call never waits for it.
        """
        self._attempt = None if progress.model_call is not None else self._attempt
        self._show()
        parent = self._pipeline_id()
        if self._by_query or parent is None or not workflow.patched(PROGRESS_PATCH):
            return
        handle = workflow.get_external_workflow_handle(parent)

        async def send() -> None:
            try:
                await handle.signal(STEP_PROGRESS, progress)
            except Exception:  # the pipeline may have ended; progress is only a courtesy
                workflow.logger.debug("progress report to %s failed", parent)

        task = asyncio.create_task(send())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _call_model(self, input: AgentStepInput, number: int) -> ModelCallOutput:
        step = input.step
        loop = self._loop
        self._check_step_budget(input)
        size = conversation_size(self._unstored())
        if size > MAX_CONVERSATION_BYTES:
            # Past Temporal's payload limit the call could never be scheduled; fail clearly instead.
            self._fail(
                f"the conversation has grown to {size:,} bytes, over the "
                f"{MAX_CONVERSATION_BYTES:,} a model call may carry; give the step tools with "
                "smaller outputs, or fewer model calls",
                ErrorType.CONVERSATION_TOO_LARGE,
            )
        self._report_progress(
            StepProgress(
                step=step.id, model_call=number, usage=loop.usage, tool_calls=loop.tool_calls
            )
        )
        # Once a worker stored the conversation, a call sends only what came since.
        sent = loop.offset + len(loop.messages)
        chain = model_chain(step)
        if chain is None:
            try:
                model = step.model if isinstance(step.model, str) else None
                reply = await self._execute(input, number, model, input.model_retry)
            except ActivityError as err:
                failure = self._activity_failure(err, input.model_retry)
                self._fail(f"model call {number} failed: {failure.message}", failure.error_type)
        else:
            reply = await self._call_chain(input, number, chain)
        loop.usage = loop.usage.plus(reply.usage)
        loop.usage_by_model = add_by_model(loop.usage_by_model, {reply.model: reply.usage})
        loop.model = reply.model
        if reply.stored:
            loop.stored, loop.stored_count = reply.stored, sent
        if reply.tool_calls:
            # Its tools may run for long: the pipeline's tokens so far include this call now.
            self._report_progress(
                StepProgress(step=step.id, usage=loop.usage, tool_calls=loop.tool_calls)
            )
        return reply

    def _check_step_budget(self, input: AgentStepInput) -> None:
        """No model call once the step's own `budget` is spent (the run's: the activity checks)."""
        budget = input.step.budget
        if budget is None:
            return
        spent = self._loop.usage
        if budget.tokens is not None and spent.total_tokens >= budget.tokens:
            self._fail(
                f"budget spent: {spent.total_tokens:,} of {budget.tokens:,} tokens (step budget)",
                ErrorType.BUDGET_EXCEEDED,
            )
        if budget.cost is not None and spent.cost >= budget.cost:
            self._fail(
                f"budget spent: {dollars(spent.cost)} of {dollars(budget.cost)} (step budget)",
                ErrorType.BUDGET_EXCEEDED,
            )

    async def _execute(
        self, input: AgentStepInput, number: int, model: str | None, retry: RetrySpec
    ) -> ModelCallOutput:
        """One model call (the activity, with its retries) asking `model`."""
        step = input.step
        loop = self._loop
        chained = model_chain(step) is not None
        summary = f"{step.id} · model call {number}/{step.max_model_calls}"
        return await workflow.execute_activity(
            MODEL_CALL_ACTIVITY,
            ModelCallInput(
                step_id=step.id,
                model=model,
                messages=[] if loop.stored else loop.messages,
                prior=loop.stored,
                tail=loop.messages[loop.stored_count - loop.offset :] if loop.stored else None,
                max_conversation_bytes=step.max_conversation_bytes,
                tools=step.tools,
                parallel_tool_calls=step.tool_calls == "parallel",
                output_schema=step.output_schema,
                call_number=number,
                report_to=self._report_to(),
                **self._budget_and_plan(input, number, model if chained else None),
            ),
            result_type=ModelCallOutput,
            summary=f"{summary} · {model}" if chained else summary,
            **activity_options(retry, input.model_timeout),
            **model_call_queue(input.routing),
        )

    def _budget_and_plan(
        self, input: AgentStepInput, number: int, model: str | None
    ) -> dict[str, Any]:
        """The call's budget and plan fields, only when set: other calls send what they did."""
        fields: dict[str, Any] = {}
        if input.budgets:
            fields["budgets"] = input.budgets
            # Once per call in the ledgers, however often the activity is retried; per model
            # of a chain, since a call that timed out may still have been charged.
            charge = f"{workflow.info().workflow_id}/{number}"
            fields["charge_id"] = f"{charge}/{model}" if model else charge
        step_budget = input.step.budget
        if (step_budget is not None and step_budget.cost is not None) or any(
            ledger.budget.cost is not None for ledger in input.budgets
        ):
            fields["cost_budget"] = True
        if input.plan is not None:
            fields["plan"] = input.plan
        return fields

    def _activity_failure(self, err: ActivityError, retry: RetrySpec) -> StepFailure:
        """A model call's final failure; a cancelled call cancels the step instead."""
        if isinstance(err.cause, CancelledError):
            raise asyncio.CancelledError(str(err.cause)) from None
        # A timed-out call fails the step as `Timeout`, as a timed-out tool step does.
        return activity_failure(err, retry)

    async def _call_chain(
        self, input: AgentStepInput, number: int, chain: list[str]
    ) -> ModelCallOutput:
        """One model call of a step with a model chain: the first model still in the running
        answers, or the step fails.

        Each call starts again at the front of the chain: a model passed over for rate limits,
        server errors or timeouts is asked first again at the next call, since the primary is
        the model the author chose and such trouble passes. A model passed over for a failure
        only another model can fix (`FALLBACK_AT_ONCE`) sits out the step's later calls.
        Every model but the last asked gets `after_attempts` attempts; the last keeps the
        step's `model_retry`, as a single model would.
        """
        sitting_out = {
            p.model: p for p in self._loop.passed_over if p.error_type in FALLBACK_AT_ONCE
        }
        candidates = [model for model in chain if model not in sitting_out]
        passed: list[PassedOver] = []
        failure = StepFailure(ErrorType.MODEL_NOT_CONFIGURED, "the model chain names no model")
        model = chain[-1]
        for position, model in enumerate(candidates):
            last = position == len(candidates) - 1
            retry = (
                input.model_retry
                if last
                else chain_retry(input.model_retry, fallback_attempts(input.step))
            )
            self._trying, self._attempt = model, None
            self._show()
            try:
                return await self._execute(input, number, model, retry)
            except ActivityError as err:
                failure = self._activity_failure(err, retry)
            finally:
                self._trying = None
            if last or failure.error_type not in FALLBACK_AFTER_ATTEMPTS | FALLBACK_AT_ONCE:
                break
            passed.append(self._pass_over(number, model, failure, chain))
        self._fail(
            chain_failure_message(number, model, failure, passed, list(sitting_out.values())),
            failure.error_type,
        )

    def _pass_over(
        self, number: int, model: str, failure: StepFailure, chain: list[str]
    ) -> PassedOver:
        """Note that `model` did not answer call `number`, and why; the next model takes over."""
        loop = self._loop
        passed = PassedOver(
            call=number,
            model=model,
            error_type=str(failure.error_type),
            error=with_attempts(failure)[:MAX_PASSED_OVER_ERROR],
        )
        loop.passed_over.append(passed)
        if passed.error_type in FALLBACK_AT_ONCE:  # later calls start past the models out
            out = {p.model for p in loop.passed_over if p.error_type in FALLBACK_AT_ONCE}
            loop.chain_at = next((i for i, m in enumerate(chain) if m not in out), len(chain))
        workflow.logger.warning(
            "model call %d: %s passed over (%s); the next model of the chain takes over",
            number,
            model,
            passed.error_type,
        )
        return passed

    async def _run_tools(
        self, input: AgentStepInput, number: int, calls: list[PlannedToolCall]
    ) -> list[ChatMessage]:
        """Run the valid calls; every call, run or not, gets a result message, in order."""
        numbered = list(enumerate(calls, start=1))
        if input.step.tool_calls == "parallel":
            room = None
            # Past the bound the calls take turns; replies within it schedule as they always did.
            if len(calls) > MAX_PARALLEL_TOOL_CALLS and workflow.patched(BOUNDED_TOOL_CALLS_PATCH):
                room = asyncio.Semaphore(MAX_PARALLEL_TOOL_CALLS)
            return list(
                await asyncio.gather(
                    *(self._run_tool(input, number, i, c, room) for i, c in numbered)
                )
            )
        return [await self._run_tool(input, number, i, call) for i, call in numbered]

    async def _run_tool(
        self,
        input: AgentStepInput,
        number: int,
        index: int,
        call: PlannedToolCall,
        room: asyncio.Semaphore | None = None,
    ) -> ChatMessage:
        if call.error is not None or call.arguments is None:
            return tool_error(call.id, call.error or "the call was not understood")
        self._loop.tool_calls += 1
        if room is not None:
            async with room:  # takes no turn while there is room: what runs is as it was
                return await self._call_tool(input, number, index, call)
        return await self._call_tool(input, number, index, call)

    async def _call_tool(
        self, input: AgentStepInput, number: int, index: int, call: PlannedToolCall
    ) -> ChatMessage:
        step = input.step
        request = ToolCallInput(
            step_id=step.id,
            tool=call.name,
            args=call.arguments,
            # By position, not the model's call id: models repeat ids, keys must not.
            idempotency_key=f"{input.idempotency_prefix}/call-{number}.{index}",
            report_to=self._report_to(),
        )
        routed = tool_call_queue(input.routing, call.name)
        try:
            if call.name in step.local_tools and not routed:
                # Run by this worker inside the workflow task: no activity task round trip.
                result: ToolCallOutput = await workflow.execute_local_activity(
                    tool_activity_name(call.name),
                    request,
                    result_type=ToolCallOutput,
                    summary=f"{step.id} · tool {call.name} (local)",
                    **local_activity_options(input.tool_retry, input.tool_timeout),
                )
            else:
                result = await workflow.execute_activity(
                    tool_activity_name(call.name),
                    request,
                    result_type=ToolCallOutput,
                    summary=f"{step.id} · tool {call.name}",
                    **activity_options(input.tool_retry, input.tool_timeout),
                    **routed,
                )
        except ActivityError as err:
            cause: Any = err.cause
            if isinstance(cause, CancelledError):
                raise asyncio.CancelledError(str(cause)) from None
            if isinstance(cause, ApplicationError):
                return tool_error(call.id, f"{cause.type}: {cause.message}")
            return tool_error(call.id, f"{type(cause).__name__}: {cause}")
        return tool_result(call.id, result.output)


def dollars(amount: float) -> str:
    """`$2.50`, `$0.0042`: cents for amounts a person budgets, more digits below a cent."""
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"


def with_attempts(failure: StepFailure) -> str:
    """`model API answered 429: slow down (after 2 attempts)`."""
    if failure.attempts > 1:
        return f"{failure.message} (after {failure.attempts} attempts)"
    return failure.message


def chain_failure_message(
    number: int,
    model: str,
    failure: StepFailure,
    passed: list[PassedOver],
    sitting_out: list[PassedOver],
) -> str:
    """Why a call of a chained step failed: the last model's error, and every model passed over.

    Without models passed over it reads as a single model's failure does.
    """
    if not passed and not sitting_out:
        return f"model call {number} failed: {failure.message}"
    reasons = [f"{p.model}: {p.error_type} at model call {p.call}: {p.error}" for p in sitting_out]
    reasons += [f"{p.model}: {p.error_type}: {p.error}" for p in passed]
    if failure.error_type in FALLBACK_AFTER_ATTEMPTS | FALLBACK_AT_ONCE:
        reasons.append(f"{model}: {failure.error_type}: {with_attempts(failure)}")
        return f"model call {number} failed on every model of the chain: {'; '.join(reasons)}"
    return (
        f"model call {number} failed on {model}: {failure.message} "
        f"(passed over: {'; '.join(reasons)})"
    )
