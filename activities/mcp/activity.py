"""The activity of every MCP tool: `tool_<server>.<tool>`, found when called.

A worker's activity types are fixed when it starts, and a server's tools are
not: they are listed when first needed, and may change while the worker runs.
So MCP tools run in the worker's dynamic activity, which still has the tool's
own activity type (`tool_files.read`: the Web UI, metrics and the step's summary
name server and tool), and goes through the same checks as a Python tool's
(`ToolActivities.call_async`: sizes, the schema, logging, failure types).
Activity types of no MCP server go on to the worker's usual refusal.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from stepflow.activities.context import ToolError
from stepflow.activities.mcp.definition import split_name
from stepflow.activities.mcp.hub import McpHub
from stepflow.activities.tool_activities import ToolActivities
from stepflow.activities.unknown import TOOL_PREFIX, UnknownActivities
from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import ToolCallInput, ToolCallOutput

log = structlog.get_logger("stepflow.mcp")


class McpToolActivities:
    """The dynamic activity of a worker with MCP servers."""

    def __init__(self, hub: McpHub, tools: ToolActivities, unknown: UnknownActivities) -> None:
        """MCP tools through `hub`, run like `tools` runs Python ones; the rest to `unknown`."""
        self.hub = hub
        self.tools = tools
        self.unknown = unknown

    @activity.defn(dynamic=True)
    async def mcp_tool(self, args: Sequence[RawValue]) -> ToolCallOutput:
        kind = activity.info().activity_type
        name = kind.removeprefix(TOOL_PREFIX)
        attempt = {"attempt": activity.info().attempt}
        server, tool = split_name(name)
        if kind.startswith(TOOL_PREFIX) and server and not self.hub.serves(name):
            servers = ", ".join(sorted(self.hub.connections))
            raise ErrorType.TOOL_NOT_REGISTERED.error(
                f"tool {name!r}: MCP server {server!r} is not configured on the worker of task "
                f"queue {self.unknown.task_queue!r} (it has: {servers}). Add it to "
                "STEPFLOW_MCP_SERVERS where the worker runs (a stepflow.toml both read keeps "
                "client and worker alike) and restart the worker",
                attempt,
            )
        if not kind.startswith(TOOL_PREFIX) or not self.hub.serves(name):
            await self.unknown.unknown_activity(args)  # raises, saying what this worker has
            raise AssertionError("unreachable")
        call = activity.payload_converter().from_payload(args[0].payload, ToolCallInput)
        try:
            defn = await self.hub.definition(name)
        except ToolError as err:
            log.warning("tool call failed", tool=name, error_type=type(err).__name__)
            raise ApplicationError(
                str(err), attempt, type=type(err).__name__, non_retryable=err.non_retryable
            ) from None
        if defn is None:
            has = ", ".join(self.hub.tool_names(server)) or "none"
            raise ErrorType.TOOL_NOT_REGISTERED.error(
                f"MCP server {server!r} has no tool {tool!r} (it has: {has})", attempt
            )
        return await self.tools.call_async(defn, call)

    async def aclose(self) -> None:
        """The worker has stopped: close the sessions, stop the stdio servers."""
        await self.hub.aclose()
