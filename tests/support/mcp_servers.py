"""Real MCP servers for the tests, written with the `mcp` package's `MCPServer`.

    python -m tests.support.mcp_servers          # the test server over stdio

The same server runs over Streamable HTTP in the test process (`HttpMcpServer`:
uvicorn on 127.0.0.1, a free port, a thread of its own), optionally refusing
requests without `Authorization: Bearer <token>`.

Its tools cover what Stepflow must carry: text, JSON (structured content),
binary (an image), an error result (`isError`), the idempotency key, a secret
from the environment, a call that kills the server (once per marker file), a
call that hangs, and one that changes a tool and adds one, and says so (`tools/list_changed`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Receive, Scope, Send

SECRET_ENV = "MCP_TEST_SECRET"
"""The variable the stdio server reads its secret from (set by the worker from its config)."""


def png_bytes(size: int) -> bytes:
    """`size` bytes that start like a PNG and are the same on every call (not random: compared)."""
    header = b"\x89PNG\r\n\x1a\n"
    body = hashlib.sha256(b"stepflow").digest() * (size // 32 + 1)
    return (header + body)[:size]


def build_server() -> MCPServer:
    """The test server; each process (or HTTP app) has its own, with its own added tools."""
    server = MCPServer(
        "stepflow-test", instructions="Tools for Stepflow's MCP tests.", log_level="WARNING"
    )

    @server.tool()
    def echo(text: str) -> str:
        """Repeat the text."""
        return text

    @server.tool()
    def lookup(key: str) -> dict[str, Any]:
        """Look a key up in a tiny table; answers JSON."""
        return {"key": key, "value": len(key), "tags": ["a", "b"]}

    @server.tool()
    def picture(size: int = 64) -> Image:
        """A PNG-ish image of `size` bytes."""
        return Image(data=png_bytes(size), format="png")

    @server.tool()
    def fail(message: str) -> str:
        """Fail with the message (the result is marked isError)."""
        raise ToolError(message)

    @server.tool()
    def record(text: str, idempotency_key: str) -> dict[str, str]:
        """Record a write under an idempotency key; answers what it got."""
        return {"text": text, "idempotency_key": idempotency_key}

    @server.tool()
    def whoami() -> str:
        """Whether the secret from the worker's environment arrived (never the secret itself)."""
        secret = os.environ.get(SECRET_ENV, "")
        return f"secret of {len(secret)} characters, sha256 {hashlib.sha256(secret.encode()).hexdigest()[:12]}"

    @server.tool()
    def crash_once(marker: str) -> str:
        """Kill this server mid-call the first time (creating `marker`); answer afterwards."""
        path = Path(marker)
        if not path.exists():
            path.write_text(str(os.getpid()))
            sys.stdout.flush()
            os._exit(3)
        return f"survived in process {os.getpid()}, the first was {path.read_text()}"

    @server.tool()
    async def hang(seconds: float, journal: str) -> str:
        """Sleep `seconds` (far past any test's timeout), noting each start in `journal`."""
        with open(journal, "a", encoding="utf-8") as file:
            file.write(f"start {time.time()}\n")
        await asyncio.sleep(seconds)
        return "woke up"

    def locked() -> str:
        """Locked: call unlock first."""
        return "locked"

    server.add_tool(locked, name="secret")

    @server.tool()
    async def unlock(ctx: Context) -> str:
        """Change the tool `secret`, add the tool `extra`, and tell the client its tools changed."""

        def secret(word: str) -> str:
            """The secret, for those who unlocked it."""
            return f"the secret is 42 ({word})"

        def extra() -> str:
            """A tool that appeared after unlock."""
            return "extra!"

        if "extra" not in {tool.name for tool in await server.list_tools()}:
            server.remove_tool("secret")
            server.add_tool(secret, name="secret")
            server.add_tool(extra, name="extra")
        await ctx.session.send_tool_list_changed()
        return "unlocked"

    return server


class BearerAuth:
    """ASGI middleware: 401 for any request without `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and dict(scope["headers"]).get(b"authorization") != self.expected
        ):
            self.refused += 1
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HttpMcpServer:
    """The test server over Streamable HTTP: `with HttpMcpServer(token=...) as server: server.url`."""

    def __init__(self, token: str | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        app: ASGIApp = build_server().streamable_http_app()
        self.auth = BearerAuth(app, token) if token else None
        config = uvicorn.Config(
            self.auth or app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,  # a client's open event stream must not hold it up
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def __enter__(self) -> HttpMcpServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


if __name__ == "__main__":
    build_server().run("stdio")
