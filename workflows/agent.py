"""`AgentStepWorkflow`: one agent step, a child of the pipeline.

It hosts the step's loop (`workflows.agent_loop.AgentLoop`: model call -> tool
calls -> the next model call); what is its own is where the progress shows
(a query and the Web UI's current details, or signals to the pipeline in runs
recorded before), how the step fails (an `ApplicationError` whose details the
pipeline reads), and continuing as new.

A long loop continues as new between model calls when the server suggests it,
carrying the conversation; the pipeline waiting on this child sees only the
final result of the chain.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from stepflow.workflows.agent_loop import MAX_PARALLEL_TOOL_CALLS, AgentLoop, dollars
from stepflow.workflows.control import (
    AGENT_PROGRESS_QUERY,
    STEP_PROGRESS,
    AgentProgress,
    StepProgress,
)
from stepflow.workflows.conversation import MAX_CONVERSATION_BYTES, conversation_size
from stepflow.workflows.errors import ErrorType, InvalidWorkflowInput
from stepflow.workflows.model_chain import (
    FALLBACK_AFTER_ATTEMPTS,
    FALLBACK_AT_ONCE,
    MAX_PASSED_OVER_ERROR,
    chain_failure_message,
    with_attempts,
)
from stepflow.workflows.models import (
    AGENT_STEP_WORKFLOW,
    AgentStepInput,
    AgentStepResult,
    TokenUsage,
)

__all__ = [
    "FALLBACK_AFTER_ATTEMPTS",
    "FALLBACK_AT_ONCE",
    "MAX_PARALLEL_TOOL_CALLS",
    "MAX_PASSED_OVER_ERROR",
    "AgentStepWorkflow",
    "chain_failure_message",
    "dollars",
    "with_attempts",
]

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

# The error types callers know by these names (`errors.ErrorType` has them all).
MAX_MODEL_CALLS_EXCEEDED = ErrorType.MAX_MODEL_CALLS_EXCEEDED
OUTPUT_INVALID = ErrorType.OUTPUT_SCHEMA_MISMATCH
CONVERSATION_TOO_LARGE = ErrorType.CONVERSATION_TOO_LARGE


# Its input comes from the pipeline, never from a person: one that fails to parse is a
# deploy's mismatch, and the task waits for a worker that reads it.
@workflow.defn(name=AGENT_STEP_WORKFLOW, failure_exception_types=[InvalidWorkflowInput])
class AgentStepWorkflow:
    """Input `AgentStepInput`, result `AgentStepResult`; the `AgentHost` of a child step.

    A step that fails for good fails this workflow with an `ApplicationError`
    whose first detail holds the model and token usage so far, so the
    pipeline's record counts the tokens of failed steps too.
    """

    def __init__(self) -> None:
        self._agent: AgentLoop | None = None
        """The loop, once `run` has its input."""
        self._reports: set[asyncio.Task[None]] = set()
        self._by_query = False
        """Progress is read by query, not signalled to the pipeline (`PROGRESS_BY_QUERY_PATCH`)."""

    @workflow.query(name=AGENT_PROGRESS_QUERY)
    def progress(self) -> AgentProgress:
        """Where the loop is: `stepflow status` and `watch` show it on the pipeline's record."""
        agent = self._agent
        if agent is None:
            return AgentProgress(model_call=1, max_model_calls=0, usage=TokenUsage(), tool_calls=0)
        loop = agent.state
        return AgentProgress(
            model_call=max(loop.next_call, 1),
            max_model_calls=agent.max_model_calls,
            usage=loop.usage,
            tool_calls=loop.tool_calls,
            model=loop.model,
            attempt=agent.attempt,
        )

    @workflow.signal(name=STEP_PROGRESS)
    def retrying(self, progress: StepProgress) -> None:
        """A call's activity retrying (only retries signal): the query and details say so."""
        agent = self._agent
        if progress.attempt is not None and agent is not None:
            agent.attempt = progress.attempt if progress.attempt > 1 else None
            self.show(agent)

    @workflow.run
    async def run(self, input: AgentStepInput) -> AgentStepResult:
        self._by_query = workflow.patched(PROGRESS_BY_QUERY_PATCH)
        self._agent = AgentLoop(input, self)
        return await self._agent.run()

    # -- AgentHost ------------------------------------------------------------------------

    def show(self, loop: AgentLoop) -> None:
        """The Web UI's current details of this step: its call, tokens and tool calls so far."""
        state = loop.state
        retrying = f" · RETRYING (attempt {loop.attempt})" if loop.attempt else ""
        trying = f" · {loop.trying}" if loop.trying else ""
        workflow.set_current_details(
            f"model call {max(state.next_call, 1)}/{loop.max_model_calls}{trying}{retrying} · "
            f"{state.usage.total_tokens:,} tokens · {state.tool_calls} tool calls"
        )

    def continue_suggested(self, loop: AgentLoop) -> bool:
        """The server suggests a fresh history, and the conversation can be handed over.

        An oversized conversation is not: the next model call fails it clearly instead.
        """
        return (
            workflow.info().is_continue_as_new_suggested()
            and conversation_size(loop.unstored()) <= MAX_CONVERSATION_BYTES
            and workflow.patched(CONTINUE_AS_NEW_PATCH)
        )

    async def continue_as_new(self, loop: AgentLoop) -> NoReturn:
        """Go on in a new run with the loop state so far; its `next_call` is next."""
        await workflow.wait_condition(lambda: not self._reports)  # progress reports sent
        input = loop.input
        state = loop.state
        carried = state.model_copy(update={"runs": state.runs + 1})
        if state.stored and not input.keep_transcript:
            # The stored messages stay behind: the next run names them, as calls do.
            carried = carried.model_copy(
                update={"messages": loop.unstored(), "offset": state.stored_count}
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

    def bounded_tool_calls(self) -> bool:
        return workflow.patched(BOUNDED_TOOL_CALLS_PATCH)

    def fail(self, message: str, error_type: str, details: dict[str, Any]) -> NoReturn:
        """Fail the step for good; the details give the pipeline the model and tokens so far."""
        raise ApplicationError(message, details, type=str(error_type), non_retryable=True)

    def charge_prefix(self) -> str:
        return workflow.info().workflow_id

    def _pipeline_id(self) -> str | None:
        parent = workflow.info().parent
        return parent.workflow_id if parent else None

    def report_to(self) -> str | None:
        """Where a retrying activity reports: this workflow (`retrying`), or the pipeline."""
        return workflow.info().workflow_id if self._by_query else self._pipeline_id()

    def report_progress(self, loop: AgentLoop, progress: StepProgress) -> None:
        """Tell the pipeline which model call is starting, for its `status` query.

        Fire and forget: the signal goes out with the activity's command in the same
        workflow task, so the call never waits for it.
        """
        self.show(loop)
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
