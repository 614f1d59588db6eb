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
    repair_request,
    tool_error,
    tool_result,
)
from stepflow.workflows.errors import ErrorType, InvalidWorkflowInput, activity_failure
from stepflow.workflows.models import (
    AGENT_STEP_WORKFLOW,
    MODEL_CALL_ACTIVITY,
    AgentLoopState,
    AgentStepInput,
    AgentStepResult,
    ChatMessage,
    ModelCallInput,
    ModelCallOutput,
    PlannedToolCall,
    ToolCallInput,
    ToolCallOutput,
    model_call_queue,
    tool_activity_name,
    tool_call_queue,
)

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
        workflow.set_current_details(
            f"model call {max(loop.next_call, 1)}/{self._max_model_calls}{retrying} · "
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
                )
            if loop.repairs == step.max_output_repairs:
                self._fail(
                    f"the answer does not match the output schema after {loop.repairs} "
                    f"repair{'s' if loop.repairs != 1 else ''}: {reply.output_error}",
                    ErrorType.OUTPUT_SCHEMA_MISMATCH,
                )
            loop.repairs += 1
            loop.messages.append(repair_request(reply.output_error))
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
        raise ApplicationError(
            message,
            {
                "model": self._loop.model,
                "usage": self._loop.usage.model_dump(),
                "tool_calls": self._loop.tool_calls,
            },
            type=str(error_type),
            non_retryable=True,
        )

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
        tail = loop.messages[loop.stored_count - loop.offset :] if loop.stored else None
        try:
            reply = await workflow.execute_activity(
                MODEL_CALL_ACTIVITY,
                ModelCallInput(
                    step_id=step.id,
                    model=step.model,
                    messages=[] if loop.stored else loop.messages,
                    prior=loop.stored,
                    tail=tail,
                    max_conversation_bytes=step.max_conversation_bytes,
                    tools=step.tools,
                    parallel_tool_calls=step.tool_calls == "parallel",
                    output_schema=step.output_schema,
                    call_number=number,
                    report_to=self._report_to(),
                ),
                result_type=ModelCallOutput,
                summary=f"{step.id} · model call {number}/{step.max_model_calls}",
                **activity_options(input.model_retry, input.model_timeout),
                **model_call_queue(input.routing),
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError(str(err.cause)) from None
            # A timed-out call fails the step as `Timeout`, as a timed-out tool step does.
            failure = activity_failure(err, input.model_retry)
            self._fail(f"model call {number} failed: {failure.message}", failure.error_type)
        loop.usage = loop.usage.plus(reply.usage)
        loop.model = reply.model
        if reply.stored:
            loop.stored, loop.stored_count = reply.stored, sent
        if reply.tool_calls:
            # Its tools may run for long: the pipeline's tokens so far include this call now.
            self._report_progress(
                StepProgress(step=step.id, usage=loop.usage, tool_calls=loop.tool_calls)
            )
        return reply

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
