"""A worker's MCP servers: their sessions, their tools as last listed, and the calls.

The hub is a registry `ToolSource`, so `get_tool("files.read")` finds the
server's tool (the model call shows its schema to the model and checks the
model's arguments against it) once `prepare` has listed the server's tools. A
listing is kept until the server says its tools changed
(`notifications/tools/list_changed`) or is started again; then the next
`prepare` or call lists them again.

A call reads its context (idempotency key, deadline) from the tool activity,
passes the key along, heartbeats while the server works, and turns the result
into the step's output, or a result marked `isError` into `McpToolError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from temporalio import activity

from stepflow.activities.context import tool_context
from stepflow.activities.heartbeats import with_heartbeats
from stepflow.activities.mcp.connection import McpConnection
from stepflow.activities.mcp.content import error_text, tool_output
from stepflow.activities.mcp.definition import (
    IDEMPOTENCY_META_KEY,
    McpToolDefinition,
    split_name,
    tool_definitions,
)
from stepflow.activities.mcp.errors import McpToolError
from stepflow.activities.registry import add_tool_source, remove_tool_source
from stepflow.runtime.mcp_config import McpServerConfig

log = structlog.get_logger("stepflow.mcp")


DEADLINE_GRACE = 5.0
"""Seconds past the attempt's deadline the request may still wait: Temporal's timeout comes
first (the step sees it as a timeout); this only bounds a request nobody cancels."""


class McpHub:
    """The MCP servers of one worker: a session each, opened when first needed."""

    def __init__(self, servers: Mapping[str, McpServerConfig]) -> None:
        self.connections = {
            name: McpConnection(name, config, on_tools_changed=self._stale_callback(name))
            for name, config in servers.items()
        }
        self._tools: dict[str, dict[str, McpToolDefinition]] = {}
        """Per server, its tools as last listed; absent: to be listed (again)."""
        self._generation: dict[str, int] = dict.fromkeys(servers, 0)
        self._listing = {name: asyncio.Lock() for name in servers}

    def register(self) -> McpHub:
        """Let `get_tool` find this hub's tools; `aclose` takes them away again."""
        add_tool_source(self)
        return self

    def serves(self, name: str) -> bool:
        """Whether `name` (`files.read`) belongs to one of these servers."""
        return split_name(name)[0] in self.connections

    # -- ToolSource --

    def find(self, name: str) -> McpToolDefinition | None:
        server, _ = split_name(name)
        return self._tools.get(server, {}).get(name)

    async def prepare(self, names: Sequence[str]) -> None:
        """List the tools of the servers `names` belong to, where not listed since a change.

        Raises:
            McpServerUnavailable: a server cannot be reached (the model call is retried).
        """
        servers = {split_name(n)[0] for n in names} & set(self.connections)
        await asyncio.gather(*(self._listed(server) for server in sorted(servers)))

    # -- lookups and calls --

    async def definition(self, name: str) -> McpToolDefinition | None:
        """The tool `name` of its server, listing the tools again once if it is not there."""
        server, _ = split_name(name)
        await self._listed(server)
        found = self.find(name)
        if found is None:  # a change whose notification is still on its way, or none was sent
            await self.refresh(server)
            found = self.find(name)
        return found

    def tool_names(self, server: str) -> list[str]:
        return sorted(self._tools.get(server, {}))

    async def _listed(self, server: str) -> None:
        if server not in self._tools:
            await self.refresh(server)

    async def refresh(self, server: str) -> None:
        """List the server's tools now."""
        async with self._listing[server]:
            generation = self._generation[server]
            tools = await self.connections[server].list_tools()
            self._tools[server] = {d.name: d for d in tool_definitions(server, tools, self._caller)}
            if self._generation[server] != generation:  # changed while listing: list again
                self._tools.pop(server, None)
        log.info("mcp tools listed", server=server, tools=len(tools))

    def _stale_callback(self, server: str) -> Callable[[], None]:
        def stale() -> None:
            self._generation[server] += 1
            self._tools.pop(server, None)

        return stale

    def _caller(self, name: str) -> Callable[..., Awaitable[Any]]:
        async def call(**arguments: Any) -> Any:
            return await self.call(name, arguments)

        return call

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call tool `name` inside its tool activity; its output, or the error the model reads.

        Raises:
            McpToolError: the result is marked `isError`.
            McpConnectionLost, McpTimeout, McpRequestFailed, McpServerUnavailable: see
                `McpConnection`.
        """
        server, tool = split_name(name)
        defn = self.find(name)
        context = tool_context()
        arguments = dict(arguments)
        if defn is not None and defn.idempotency_param is not None:
            arguments[defn.idempotency_param] = context.idempotency_key
        connection = self.connections[server]
        result = await with_heartbeats(
            connection.call_tool(
                tool,
                arguments,
                meta={IDEMPOTENCY_META_KEY: context.idempotency_key},
                read_timeout=_request_timeout(),
            )
        )
        if result.is_error:
            raise McpToolError(f"{name}: {connection.reason_text(error_text(result))}")
        return tool_output(result, defn.output_schema if defn is not None else None)

    async def aclose(self) -> None:
        """Close every session (stdio servers stop) and leave the registry."""
        remove_tool_source(self)
        await asyncio.gather(*(c.aclose() for c in self.connections.values()))


def _request_timeout() -> float | None:
    """Seconds the request may wait: to the attempt's deadline, and a little past it."""
    info = activity.info()
    deadlines = []
    if info.start_to_close_timeout:
        deadlines.append(info.started_time + info.start_to_close_timeout)
    if info.schedule_to_close_timeout:
        deadlines.append(info.scheduled_time + info.schedule_to_close_timeout)
    if not deadlines:
        return None
    left = (min(deadlines) - datetime.now(UTC)).total_seconds()
    return max(left, 0.0) + DEADLINE_GRACE
