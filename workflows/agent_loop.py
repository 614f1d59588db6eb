"""`AgentLoop`: an agent step's loop, whichever workflow hosts it.

The loop: model call (activity `model_call`) -> the tool calls it asked for
(one activity each, `tool_<name>`, in parallel unless the step says
sequential) -> the next model call with their results, until the model gives
a final answer or the step has made `max_model_calls` calls. The conversation
lives in the loop's state, in workflow memory, so a crashed worker resumes it
from history instead of starting the step over.

Two workflows host it (`AgentHost`): an agent step's own child workflow
(`workflows.agent.AgentStepWorkflow`), which may continue as new and answers
a progress query; and, for a step with `inline: true`, the pipeline's workflow
itself (`workflows.steps.agent`), which keeps the progress on the step's record.
The host decides only what differs between them; every command the loop
schedules is the same in both.

A step whose `model` is a chain (`[primary, backup, local]`) makes each model
call with the first model still in the running; when its activity fails for
good in a way another model may get past, the next model takes over (see
`_call_chain`, and `model_chain` for its rules). A step with one model schedules
exactly what it always did.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn, Protocol

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError, RetryState

from stepflow.workflows.activity_options import activity_options
from stepflow.workflows.agent_tools import MAX_PARALLEL_TOOL_CALLS as MAX_PARALLEL_TOOL_CALLS
from stepflow.workflows.agent_tools import ToolCalls
from stepflow.workflows.control import StepProgress
from stepflow.workflows.conversation import (
    MAX_CONVERSATION_BYTES,
    conversation_size,
    first_user_message,
    plan_repair_request,
    repair_request,
)
from stepflow.workflows.errors import ErrorType, StepFailure, activity_failure
from stepflow.workflows.model_chain import (
    chain_failure_message,
    moves_on,
    pass_over,
    sitting_out,
)
from stepflow.workflows.models import (
    MODEL_CALL_ACTIVITY,
    AgentLoopState,
    AgentStepInput,
    AgentStepResult,
    ChatMessage,
    ModelCallInput,
    ModelCallOutput,
    PassedOver,
    RetrySpec,
    add_by_model,
    model_call_queue,
)
from stepflow.workflows.step_settings import chain_retry, fallback_attempts, model_chain


class AgentHost(Protocol):
    """What differs between the workflows that run an agent step's loop."""

    def report_to(self) -> str | None:
        """The workflow a retrying activity tells (`STEP_PROGRESS`); None: the caller."""
        ...

    def charge_prefix(self) -> str:
        """What makes a model call's budget charge id unique: the step's child workflow id."""
        ...

    def continue_suggested(self, loop: AgentLoop) -> bool:
        """Whether to continue as new before the next model call (never, inline)."""
        ...

    async def continue_as_new(self, loop: AgentLoop) -> NoReturn:
        """Go on in a new run with `loop.state`."""
        ...

    def bounded_tool_calls(self) -> bool:
        """Whether a reply of more than `MAX_PARALLEL_TOOL_CALLS` calls runs them in turns."""
        ...

    def report_progress(self, loop: AgentLoop, progress: StepProgress) -> None:
        """A model call is starting (`model_call` set), or its tools are: show it."""
        ...

    def show(self, loop: AgentLoop) -> None:
        """The call's model or attempt changed: show it where the host shows progress."""
        ...

    def fail(self, message: str, error_type: str, details: dict[str, Any]) -> NoReturn:
        """Fail the step for good; `details` hold its model, usage and tool calls so far."""
        ...


class AgentLoop:
    """One agent step's loop over its `AgentStepInput`, run by `host`."""

    def __init__(self, input: AgentStepInput, host: AgentHost) -> None:
        self.input = input
        self.host = host
        if input.carried is None:
            self.state = AgentLoopState(
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
            self.state = input.carried.model_copy(update={"messages": list(input.carried.messages)})
        """The loop's whole state; continue-as-new hands it over as it is."""
        self.attempt: int | None = None
        """A call retrying now (its activity reports each attempt after the first)."""
        self.trying: str | None = None
        """With a model chain: the model the current call is asking."""

    @property
    def max_model_calls(self) -> int:
        return self.input.step.max_model_calls

    async def run(self) -> AgentStepResult:
        """Model calls and tool calls until a final answer; the step's failure otherwise."""
        input = self.input
        step = input.step
        loop = self.state
        first = loop.next_call
        for number in range(first, step.max_model_calls + 1):
            loop.next_call = number
            if number > first and self.host.continue_suggested(self):
                await self.host.continue_as_new(self)
            reply = await self._call_model(number)
            loop.messages.append(reply.message)
            if reply.tool_calls:
                if number < step.max_model_calls:
                    calls = ToolCalls(input, loop, self.host)
                    loop.messages.extend(await calls.run(number, reply.tool_calls))
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
                self.fail(
                    f"the plan is still invalid after {repairs}: {reply.output_error}",
                    ErrorType.PLAN_INVALID,
                )
            if loop.repairs == step.max_output_repairs:
                self.fail(
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
        self.fail(
            f"no final answer after {step.max_model_calls} model calls "
            f"(max_model_calls: {step.max_model_calls})",
            ErrorType.MAX_MODEL_CALLS_EXCEEDED,
        )

    def unstored(self) -> list[ChatMessage]:
        """The messages no worker has stored yet: what the next call carries in history."""
        loop = self.state
        return loop.messages[loop.stored_count - loop.offset :] if loop.stored else loop.messages

    def details(self) -> dict[str, Any]:
        """The model, tokens and tool calls so far: a failure's details, for the pipeline."""
        loop = self.state
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
        return details

    def fail(self, message: str, error_type: str) -> NoReturn:
        """Fail the step for good; the details give the pipeline the model and tokens so far."""
        self.host.fail(message, error_type, self.details())

    def _report_progress(self, progress: StepProgress) -> None:
        """A call starting clears the attempt a retry of the one before showed."""
        self.attempt = None if progress.model_call is not None else self.attempt
        self.host.report_progress(self, progress)

    async def _call_model(self, number: int) -> ModelCallOutput:
        input = self.input
        step = input.step
        loop = self.state
        self._check_step_budget()
        size = conversation_size(self.unstored())
        if size > MAX_CONVERSATION_BYTES:
            # Past Temporal's payload limit the call could never be scheduled; fail clearly instead.
            self.fail(
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
                reply = await self._execute(number, model, input.model_retry)
            except ActivityError as err:
                failure = self._activity_failure(err, input.model_retry)
                self.fail(f"model call {number} failed: {failure.message}", failure.error_type)
        else:
            reply = await self._call_chain(number, chain)
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

    def _check_step_budget(self) -> None:
        """No model call once the step's own `budget` is spent (the run's: the activity checks)."""
        budget = self.input.step.budget
        if budget is None:
            return
        spent = self.state.usage
        if budget.tokens is not None and spent.total_tokens >= budget.tokens:
            self.fail(
                f"budget spent: {spent.total_tokens:,} of {budget.tokens:,} tokens (step budget)",
                ErrorType.BUDGET_EXCEEDED,
            )
        if budget.cost is not None and spent.cost >= budget.cost:
            self.fail(
                f"budget spent: {dollars(spent.cost)} of {dollars(budget.cost)} (step budget)",
                ErrorType.BUDGET_EXCEEDED,
            )

    async def _execute(self, number: int, model: str | None, retry: RetrySpec) -> ModelCallOutput:
        """One model call (the activity, with its retries) asking `model`."""
        input = self.input
        step = input.step
        loop = self.state
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
                report_to=self.host.report_to(),
                **self._budget_and_plan(number, model if chained else None),
            ),
            result_type=ModelCallOutput,
            summary=f"{summary} · {model}" if chained else summary,
            **activity_options(retry, input.model_timeout),
            **model_call_queue(input.routing),
        )

    def _budget_and_plan(self, number: int, model: str | None) -> dict[str, Any]:
        """The call's budget and plan fields, only when set: other calls send what they did."""
        input = self.input
        fields: dict[str, Any] = {}
        if input.budgets:
            fields["budgets"] = input.budgets
            # Once per call in the ledgers, however often the activity is retried; per model
            # of a chain, since a call that timed out may still have been charged.
            charge = f"{self.host.charge_prefix()}/{number}"
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

    async def _call_chain(self, number: int, chain: list[str]) -> ModelCallOutput:
        """One model call of a step with a model chain: the first model still in the running
        answers, or the step fails.

        Each call starts again at the front of the chain: a model passed over for rate limits,
        server errors or timeouts is asked first again at the next call, since the primary is
        the model the author chose and such trouble passes. A model passed over for a failure
        only another model can fix (`FALLBACK_AT_ONCE`) sits out the step's later calls.
        Every model but the last asked gets `after_attempts` attempts; the last keeps the
        step's `model_retry`, as a single model would.
        """
        input = self.input
        out = sitting_out(self.state)
        candidates = [model for model in chain if model not in out]
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
            self.trying, self.attempt = model, None
            self.host.show(self)
            try:
                return await self._execute(number, model, retry)
            except ActivityError as err:
                failure = self._activity_failure(err, retry)
                # Any failure the call's retry policy would have tried again counts against
                # this model (the payload store, a worker without the output schema's module
                # too): the next model takes over, and the last gets the step's full retries.
                exhausted = err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
            finally:
                self.trying = None
            if last or not moves_on(failure, exhausted):
                break
            passed.append(pass_over(self.state, number, model, failure, chain))
        self.fail(
            chain_failure_message(number, model, failure, passed, list(out.values())),
            failure.error_type,
        )


def dollars(amount: float) -> str:
    """`$2.50`, `$0.0042`: cents for amounts a person budgets, more digits below a cent."""
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"
