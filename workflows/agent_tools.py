"""An agent step's tool calls: the ones a model reply asked for, each one activity
(`tool_<name>`; a local activity for the step's `local_tools`), in parallel unless the step
says `tool_calls: sequential`.

Every call, run or refused, answers with a message in the order the model asked, so the
next model call sees one result per call. A tool that fails for good answers with its
error rather than failing the step: the model may do without it. The loop
(`agent_loop.AgentLoop`) calls `ToolCalls.run` after each reply that asked for tools.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from stepflow.workflows.activity_options import activity_options, local_activity_options
from stepflow.workflows.conversation import tool_error, tool_result
from stepflow.workflows.models import (
    AgentLoopState,
    AgentStepInput,
    ChatMessage,
    PlannedToolCall,
    ToolCallInput,
    ToolCallOutput,
    tool_activity_name,
    tool_call_queue,
)

MAX_PARALLEL_TOOL_CALLS = 500
"""Tool calls of one reply running at once: Temporal allows 2,000 pending activities a workflow."""


class ToolHost(Protocol):
    """What of the workflow hosting the loop the tool calls need (`agent_loop.AgentHost`)."""

    def report_to(self) -> str | None: ...

    def bounded_tool_calls(self) -> bool: ...


class ToolCalls:
    """The tool calls of one agent step: its input, the loop's state (the count), its host."""

    def __init__(self, input: AgentStepInput, state: AgentLoopState, host: ToolHost) -> None:
        self.input = input
        self.state = state
        self.host = host

    async def run(self, number: int, calls: list[PlannedToolCall]) -> list[ChatMessage]:
        """Run the valid calls; every call, run or not, gets a result message, in order."""
        numbered = list(enumerate(calls, start=1))
        if self.input.step.tool_calls == "parallel":
            room = None
            # Past the bound the calls take turns; replies within it schedule as they always did.
            if len(calls) > MAX_PARALLEL_TOOL_CALLS and self.host.bounded_tool_calls():
                room = asyncio.Semaphore(MAX_PARALLEL_TOOL_CALLS)
            return list(
                await asyncio.gather(*(self._run_tool(number, i, c, room) for i, c in numbered))
            )
        return [await self._run_tool(number, i, call) for i, call in numbered]

    async def _run_tool(
        self,
        number: int,
        index: int,
        call: PlannedToolCall,
        room: asyncio.Semaphore | None = None,
    ) -> ChatMessage:
        if call.error is not None or call.arguments is None:
            return tool_error(call.id, call.error or "the call was not understood")
        self.state.tool_calls += 1
        if room is not None:
            async with room:  # takes no turn while there is room: what runs is as it was
                return await self._call_tool(number, index, call)
        return await self._call_tool(number, index, call)

    async def _call_tool(self, number: int, index: int, call: PlannedToolCall) -> ChatMessage:
        input = self.input
        step = input.step
        request = ToolCallInput(
            step_id=step.id,
            tool=call.name,
            args=call.arguments,
            # By position, not the model's call id: models repeat ids, keys must not.
            idempotency_key=f"{input.idempotency_prefix}/call-{number}.{index}",
            report_to=self.host.report_to(),
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
