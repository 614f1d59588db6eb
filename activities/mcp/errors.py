"""Why an MCP tool call failed, as `ToolError`s: the class name is the failure's type in history.

Messages name the server and tool, never a header or environment value: the
connection takes its secrets out of any text from the SDK before it gets here.
"""

from __future__ import annotations

from stepflow.activities.context import ToolError


class McpServerUnavailable(ToolError):
    """The server could not be started or reached, or did not answer its handshake: retried."""

    def __init__(self, server: str, where: str, reason: str) -> None:
        super().__init__(f"MCP server {server!r} ({where}) cannot be reached: {reason}")
        self.server = server


class McpConnectionLost(ToolError):
    """The server went away during the call (a stdio server that died): retried on a new one."""


class McpTimeout(ToolError):
    """The server did not answer before the attempt's deadline: retried."""


class McpRequestFailed(ToolError):
    """The server answered the call with a protocol error (an unknown tool, bad arguments...)."""


class McpToolError(ToolError):
    """The tool ran and reported an error (`isError`): the model reads it, as a failing tool's.

    Not retried: the same call would fail the same way; an agent's model may call again.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


class McpConfigInvalid(ToolError):
    """The server's configuration cannot be used here (a `${VAR}` that is not set)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)
