"""Reading MCP servers' tools once, from a command: `stepflow validate`, `stepflow tools`.

A command connects to the servers it needs (a pipeline's, or all for `tools`),
lists their tools, and closes the sessions again (stdio servers stop); the
tools it read are then what `get_tool` finds in this process, so `validate`
checks literal arguments against the servers' own schemas. The commands are
synchronous, and may run inside an event loop, so the servers are read on a
thread with a loop of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from stepflow.activities.context import ToolError
from stepflow.activities.mcp.connection import McpConnection
from stepflow.activities.mcp.definition import McpToolDefinition, split_name, tool_definitions
from stepflow.activities.registry import add_tool_source
from stepflow.runtime.mcp_config import McpServerConfig
from stepflow.runtime.settings import Settings, get_settings


@dataclass
class McpListing:
    """What a command read from the servers."""

    tools: list[McpToolDefinition] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    """One line per server that could not be read, by server name."""


class _ListedTools:
    """The tools this process read from servers (a registry `ToolSource`)."""

    def __init__(self) -> None:
        self.tools: dict[str, McpToolDefinition] = {}

    def find(self, name: str) -> McpToolDefinition | None:
        return self.tools.get(name)

    async def prepare(self, names: Sequence[str]) -> None:
        """Read once, when the command asked: nothing to bring up to date."""


_listed = _ListedTools()


def load_mcp_tools(
    servers: Iterable[str] | None = None, settings: Settings | None = None
) -> McpListing:
    """Read the tools of the configured servers among `servers` (None: all of them).

    Servers that are not configured are left out (`mcp_config.unknown_server_hint` says so).
    Afterwards `get_tool` finds the tools read.
    """
    configured = (settings or get_settings()).mcp_servers
    wanted = sorted(configured) if servers is None else sorted(set(servers) & set(configured))
    if not wanted:
        return McpListing()
    with ThreadPoolExecutor(1, thread_name_prefix="stepflow-mcp") as pool:
        listing = pool.submit(asyncio.run, _read({n: configured[n] for n in wanted})).result()
    for server in wanted:  # a server's tools as read now, none left from an earlier read
        for name in [n for n in _listed.tools if split_name(n)[0] == server]:
            del _listed.tools[name]
    _listed.tools.update({defn.name: defn for defn in listing.tools})
    add_tool_source(_listed, fallback=True)  # a worker's live servers in this process win
    return listing


async def _read(servers: Mapping[str, McpServerConfig]) -> McpListing:
    listing = McpListing()

    async def one(name: str, config: McpServerConfig) -> None:
        connection = McpConnection(name, config, quiet=True)
        try:
            tools = await connection.list_tools()
            listing.tools.extend(tool_definitions(name, tools, _runs_on_workers))
        except ToolError as err:
            listing.problems[name] = str(err)
        finally:
            await connection.aclose()

    await asyncio.gather(*(one(name, config) for name, config in servers.items()))
    listing.tools.sort(key=lambda defn: defn.name)
    return listing


def _runs_on_workers(name: str) -> Callable[..., Any]:
    async def call(**_arguments: Any) -> Any:
        raise ToolError(f"{name} is an MCP tool: it runs on a worker, as a step")

    return call
