"""One MCP server's session: opened when first needed, kept, and opened again when it ends.

The SDK's transports (`stdio_client`, `streamable_http_client`) and
`ClientSession` are anyio context managers that must be left by the task that
entered them, so each session lives in a task of its own (`_hold`) that waits
until it is told to stop; calls from any activity use the session meanwhile.

A stdio server that dies ends its session: the call in flight fails with
`McpConnectionLost` (retried by the step's policy) and the next call starts the
server again. An HTTP transport error does the same with the HTTP session.

`${VAR}`s are filled in at each start, from the environment then; the values
(and header and environment values) are taken out of every message about the
server, and nothing here logs arguments, headers or environment.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, TextIO

import httpx2
import mcp.types as types
import structlog
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Implementation, Tool

from stepflow.activities.mcp.errors import (
    McpConfigInvalid,
    McpConnectionLost,
    McpRequestFailed,
    McpServerUnavailable,
    McpTimeout,
)
from stepflow.activities.redaction import redact_urls
from stepflow.runtime.mcp_config import McpConfigError, McpServerConfig, ResolvedServer

log = structlog.get_logger("stepflow.mcp")

CLIENT_INFO = Implementation(name="stepflow", version="0.1.0")

CONNECTION_CLOSED = -32000
REQUEST_TIMEOUT = -32001
INVALID_REQUEST = -32600
REJECTED_CODES = {-32600, -32601, -32602}
"""Invalid request, method not found, invalid params: the same call would be refused again."""

HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
"""The SDK's own defaults: a server may hold a response stream open for long."""

STOP_TIMEOUT = 10.0
"""Seconds a session gets to close (a stdio server: stdin closed, then SIGTERM, then SIGKILL)."""

MAX_REASON = 300


@dataclass
class _Live:
    session: ClientSession
    stop: asyncio.Event
    task: asyncio.Task[None]
    broken: bool = False


class McpConnection:
    """The session with one server, and the tool calls and listings made over it."""

    def __init__(
        self,
        name: str,
        config: McpServerConfig,
        on_tools_changed: Callable[[], None] | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        """A connection to server `name`, not yet open.

        Args:
            on_tools_changed: Called when the server says its tools changed, and when it
                was started again (a new process may have other tools).
            quiet: Log connecting at debug level: a command says what failed in its own words.
        """
        self.name = name
        self.config = config
        self.where = config.describe()
        self.starts = 0
        self._log = log.debug if quiet else log.info
        self._warn = log.debug if quiet else log.warning
        self._on_tools_changed = on_tools_changed or (lambda: None)
        self._live: _Live | None = None
        self._lock = asyncio.Lock()
        self._redact: Callable[[str], str] = lambda text: text

    async def session(self) -> ClientSession:
        """The open session; the server is started (again) if it is not running.

        Raises:
            McpServerUnavailable: it cannot be started or reached, or did not answer in time.
            McpConfigInvalid: a `${VAR}` of its configuration is not set.
        """
        async with self._lock:
            live = self._live
            if live is not None and not live.broken and not live.task.done():
                return live.session
            if live is not None:
                self._live = None
                await _stop(live.stop, live.task)
                log.info("mcp server restarting", server=self.name, where=self.where)
            self._live = await self._start()
            self.starts += 1
            if self.starts > 1:
                self._on_tools_changed()
            return self._live.session

    async def list_tools(self) -> list[Tool]:
        """Every tool the server lists now (all pages)."""
        session = await self.session()
        tools: list[Tool] = []
        cursor: str | None = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            try:
                page = await session.list_tools(params=params)
            except MCPError as err:
                raise self._failure(session, err, "listing its tools") from None
            except Exception as err:
                self._mark_broken(session)
                raise McpConnectionLost(
                    f"MCP server {self.name!r} failed while listing its tools: {self.reason(err)}"
                ) from None
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def call_tool(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> CallToolResult:
        """One `tools/call`; the result as the server gave it, `isError` or not.

        Raises:
            McpConnectionLost: the server went away meanwhile (retryable).
            McpTimeout: no answer within `read_timeout` seconds (retryable).
            McpRequestFailed: the server refused the request.
        """
        session = await self.session()
        try:
            result = await session.call_tool(
                tool,
                arguments,
                read_timeout_seconds=read_timeout,
                meta=meta,  # type: ignore[arg-type]  # an open map; TypedDict in the SDK
            )
        except MCPError as err:
            raise self._failure(session, err, f"calling {tool!r}") from None
        except Exception as err:
            self._mark_broken(session)
            raise McpConnectionLost(
                f"MCP server {self.name!r} failed while calling {tool!r}: {self.reason(err)}"
            ) from None
        if not isinstance(result, CallToolResult):
            raise McpRequestFailed(
                f"MCP server {self.name!r} answered {tool!r} with a {type(result).__name__}, "
                "not a tool result",
                non_retryable=True,
            )
        return result

    def _failure(self, session: ClientSession, err: MCPError, doing: str) -> Exception:
        code = err.error.code
        message = self.reason_text(err.error.message)
        # An HTTP server that restarted no longer knows the session: a new one is needed.
        if code == CONNECTION_CLOSED or (code == INVALID_REQUEST and "session" in message.lower()):
            self._mark_broken(session)
            return McpConnectionLost(
                f"MCP server {self.name!r} closed the connection while {doing} ({self.where}): "
                "it is connected again for the next attempt"
            )
        if code == REQUEST_TIMEOUT:
            return McpTimeout(f"MCP server {self.name!r} did not answer in time while {doing}")
        return McpRequestFailed(
            f"MCP server {self.name!r} refused {doing}: {message} (code {code})",
            non_retryable=code in REJECTED_CODES,
        )

    def _mark_broken(self, session: ClientSession) -> None:
        if self._live is not None and self._live.session is session:
            self._live.broken = True

    def reason(self, err: BaseException) -> str:
        """What went wrong, in one line without secrets: the innermost error of a group."""
        while isinstance(err, BaseExceptionGroup) and err.exceptions:
            err = err.exceptions[0]
        text = str(err) or type(err).__name__
        if isinstance(err, TimeoutError) and not str(err):
            text = "no answer in time"
        elif isinstance(err, OSError | httpx2.HTTPError) or not str(err):
            text = f"{type(err).__name__}: {text}" if str(err) else text
        return self.reason_text(text)

    def reason_text(self, text: str) -> str:
        text = redact_urls(self._redact(" ".join(text.split())))
        return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."

    async def _start(self) -> _Live:
        try:
            resolved = self.config.resolve(self.name)
        except McpConfigError as err:
            raise McpConfigInvalid(str(err)) from None
        self._redact = resolved.redact
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[ClientSession] = loop.create_future()
        stop = asyncio.Event()
        task = loop.create_task(self._hold(resolved, ready, stop), name=f"mcp-server-{self.name}")
        try:
            session = await asyncio.wait_for(asyncio.shield(ready), self.config.connect_timeout)
        except asyncio.CancelledError:
            await _stop(stop, task, grace=0.0)
            raise
        except Exception as err:
            await _stop(stop, task, grace=0.0)  # it may hang in the handshake: no waiting
            reason = self.reason(err)
            self._warn("mcp server unavailable", server=self.name, where=self.where, error=reason)
            raise McpServerUnavailable(self.name, self.where, reason) from None
        self._log("mcp server connected", server=self.name, where=self.where)
        return _Live(session, stop, task)

    async def _hold(
        self, resolved: ResolvedServer, ready: asyncio.Future[ClientSession], stop: asyncio.Event
    ) -> None:
        """Open the transport and session, hand the session over, keep both until told to stop."""
        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(
                    await self._transport(resolved, stack)
                )
                session = await stack.enter_async_context(
                    ClientSession(
                        read, write, message_handler=self._on_message, client_info=CLIENT_INFO
                    )
                )
                # The handshake (not `server/discover`): what deployed servers speak, and where
                # servers announce `notifications/tools/list_changed` on their own.
                await session.initialize()
                if not ready.done():
                    ready.set_result(session)
                await stop.wait()
        except Exception as err:
            if not ready.done():
                ready.set_exception(err)
            else:
                log.warning("mcp server session ended", server=self.name, error=self.reason(err))

    async def _transport(
        self, resolved: ResolvedServer, stack: AsyncExitStack
    ) -> AbstractAsyncContextManager[Any]:
        if resolved.command is not None:
            params = StdioServerParameters(
                command=resolved.command,
                args=resolved.args,
                env=resolved.env or None,  # on top of PATH, HOME...: not the worker's secrets
                cwd=resolved.cwd,
            )
            return stdio_client(params, errlog=_errlog())
        assert resolved.url is not None
        client = await stack.enter_async_context(
            httpx2.AsyncClient(headers=resolved.headers, timeout=HTTP_TIMEOUT)
        )
        return streamable_http_client(resolved.url, http_client=client)

    async def _on_message(self, message: types.ServerNotification | Exception) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            log.info("mcp server's tools changed", server=self.name)
            self._on_tools_changed()
        elif isinstance(message, Exception):
            log.debug("mcp transport error", server=self.name, error=self.reason(message))

    async def aclose(self) -> None:
        """Close the session (and stop a stdio server)."""
        async with self._lock:
            live, self._live = self._live, None
        if live is not None:
            await _stop(live.stop, live.task)


async def _stop(stop: asyncio.Event, task: asyncio.Task[None], grace: float = STOP_TIMEOUT) -> None:
    """Tell a session's task to close it, and wait up to `grace` seconds; then cancel it."""
    stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    except asyncio.CancelledError:
        task.cancel()
        raise
    except Exception:
        pass  # it ended with an error, already logged by `_hold`


def _errlog() -> TextIO:
    """Where a stdio server's stderr goes: the worker's, if it is a real file (not a capture)."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr
    return sys.stderr
