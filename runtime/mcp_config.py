"""MCP servers a project uses, by name, in the shape most MCP clients already read.

    STEPFLOW_MCP_SERVERS='{"files": {"command": "npx", "args": ["-y", "some-server"],
                                     "env": {"ROOT": "/data"}},
                           "search": {"url": "https://mcp.example/mcp",
                                      "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"}}}'

or `[tool.stepflow.mcp_servers.files]` tables in the project's file. A server
with `command` runs as a subprocess over stdio; one with `url` is reached over
Streamable HTTP. `${VAR}` anywhere in a value is taken from the environment of
the process that connects (the worker; `stepflow validate` and `stepflow tools`
too), when it connects: the settings, the files and the run's history only
ever hold the reference, never the secret.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

SERVER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
"""A server's name starts its tools' names (`files.read`): no dots, nothing a model refuses."""

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class McpConfigError(ValueError):
    """A server's configuration that cannot be used; one line, naming the server, never a value."""


class McpServerConfig(BaseModel):
    """One MCP server: `command` (stdio) or `url` (Streamable HTTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | None = Field(default=None, description="The program of a stdio server.")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    env: dict[str, str] = Field(
        default_factory=dict,
        repr=False,  # may hold a key written literally
        description="Its environment, besides PATH, HOME and the like (not the worker's whole "
        "environment: secrets go only where named).",
    )
    cwd: str | None = Field(default=None, description="Its working directory.")
    url: str | None = Field(default=None, description="The endpoint of a Streamable HTTP server.")
    headers: dict[str, str] = Field(
        default_factory=dict, repr=False, description="Sent with each request."
    )
    connect_timeout: float = Field(
        default=20.0, gt=0, description="Seconds to start or reach the server and list its tools."
    )

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (a stdio server) or `url` (Streamable HTTP)")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("`args`, `env` and `cwd` are for stdio servers (`command`)")
        if self.command is not None and self.headers:
            raise ValueError("`headers` are for HTTP servers (`url`)")
        return self

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def describe(self) -> str:
        """Where the server is, for logs and messages: no arguments, environment or headers."""
        if self.command is not None:
            return f"stdio: {os.path.basename(self.command)}"
        return f"http: {safe_url(self.url or '')}"

    def resolve(self, name: str, environ: Mapping[str, str] | None = None) -> ResolvedServer:
        """The configuration with every `${VAR}` replaced from `environ` (default: os.environ).

        Raises:
            McpConfigError: a variable that is not set (named, with the server and field).
        """
        environ = os.environ if environ is None else environ
        secrets: list[str] = []

        def expand(value: str, where: str) -> str:
            def replace(match: re.Match[str]) -> str:
                variable = match.group(1)
                if variable not in environ:
                    raise McpConfigError(
                        f"MCP server {name!r}: {where} uses ${{{variable}}}, which is not set "
                        "in this process's environment"
                    )
                secrets.append(environ[variable])
                return environ[variable]

            return _REFERENCE.sub(replace, value)

        resolved = ResolvedServer(
            name=name,
            config=self,
            command=expand(self.command, "command") if self.command is not None else None,
            args=[expand(arg, f"args[{i}]") for i, arg in enumerate(self.args)],
            env={key: expand(value, f"env.{key}") for key, value in self.env.items()},
            cwd=expand(self.cwd, "cwd") if self.cwd is not None else None,
            url=expand(self.url, "url") if self.url is not None else None,
            headers={key: expand(value, f"headers.{key}") for key, value in self.headers.items()},
        )
        # Header and environment values are secrets whether or not they came from a variable;
        # short literal ones (`ROOT=/data`) are left readable in messages.
        literal = [*resolved.headers.values(), *resolved.env.values()]
        kept = {s for s in secrets if len(s) >= 4} | {s for s in literal if len(s) >= 8}
        resolved.secrets = sorted(kept, key=len, reverse=True)
        return resolved


@dataclass
class ResolvedServer:
    """A server's configuration with its `${VAR}`s filled in: held in memory, never logged."""

    name: str
    config: McpServerConfig
    command: str | None
    args: list[str]
    env: dict[str, str]
    cwd: str | None
    url: str | None
    headers: dict[str, str]
    secrets: list[str] = field(default_factory=list, repr=False)
    """The values to take out of any text about this server (longest first)."""

    def __repr__(self) -> str:  # the dataclass's would print the headers and the environment
        return f"ResolvedServer({self.name!r}, {self.config.describe()})"

    def redact(self, text: str) -> str:
        """`text` without this server's secrets (header and environment values, `${VAR}`s)."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def tool_server(name: str) -> str | None:
    """The server a tool name like `files.read` belongs to; None for a Python tool's name."""
    server, dot, _ = name.partition(".")
    return server if dot else None


def servers_of(tool_names: Iterable[str]) -> set[str]:
    """The servers that tool names like `files.read` belong to."""
    return {server for name in tool_names if (server := tool_server(name))}


def unknown_server_hint(name: str, servers: Mapping[str, Any]) -> str:
    """For an unknown tool `x.y`: that no server `x` is among `servers`, if none is; else ``."""
    server = tool_server(name)
    if server is None or server in servers:
        return ""
    return f" (no MCP server {server!r} is configured: STEPFLOW_MCP_SERVERS)"


def safe_url(url: str) -> str:
    """Scheme, host, port and path only: no user info, query or fragment, which may hold keys."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an invalid URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def parse_servers(value: Any) -> Any:
    """What `STEPFLOW_MCP_SERVERS` holds (JSON text) as a mapping; anything else as it is.

    Raises:
        ValueError: text that is not a JSON object, or a server name that cannot name tools.
    """
    import json

    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON: {err}") from None
        if not isinstance(value, dict):
            raise ValueError('expected a JSON object: {"name": {"command": ...} or {"url": ...}}')
    if isinstance(value, dict):
        for name in value:
            if not isinstance(name, str) or not re.match(SERVER_NAME_PATTERN, name):
                raise ValueError(
                    f"server name {name!r}: use letters, digits, - and _ (it starts its tools' "
                    "names, as in files.read)"
                )
    return value
