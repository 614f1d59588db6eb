"""Stepflow's own settings, from `STEPFLOW_*` environment variables.

Temporal connection settings (address, namespace, API key, TLS, profiles) are
not here: they come from `temporalio.envconfig` (see `runtime.connection`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from stepflow.runtime.mcp_config import McpServerConfig, parse_servers
from stepflow.runtime.project import find_project, project_values
from stepflow.workflows.durations import PositiveDuration

CommaList = Annotated[list[str], NoDecode]

_PREFIX = "STEPFLOW_"


class ModelPrice(BaseModel):
    """What a model's tokens cost, in US dollars per million tokens (`cost` budgets use it).

    `{"input": 2.50, "output": 10.00}`; `cached_input` prices the prompt tokens the
    provider served from its cache (absent: they cost `input`). A price of 0 is a price:
    a free model (a local one) counts as priced.
    """

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, allow_inf_nan=False, description="USD per million prompt tokens.")
    output: float = Field(
        ge=0, allow_inf_nan=False, description="USD per million completion tokens."
    )
    cached_input: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="USD per million cached prompt tokens; absent: the `input` price.",
    )


class ModelSettings(BaseModel):
    """How the worker reaches one model name that pipelines use in `model:`.

    Keys are never here: `api_key_env` names the environment variable that
    holds the key, which the model activity reads on the worker at call time.
    """

    model_config = ConfigDict(extra="forbid")

    provider_model: str | None = Field(
        default=None, description="The provider's model id; default: the configured name."
    )
    base_url: str | None = Field(
        default=None, description="An OpenAI-compatible API; default: OPENAI_BASE_URL or OpenAI."
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY", description="Environment variable holding the API key."
    )
    context_tokens: int | None = Field(
        default=None,
        ge=1,
        description="The model's context window: agent steps fail before a call whose "
        "conversation is over about 4 bytes a token of it (max_conversation_bytes overrides).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Default request parameters, e.g. temperature or max_completion_tokens.",
    )
    structured_output: bool = Field(
        default=True,
        description="Send `response_format` with the output schema (off for servers without it).",
    )
    price: ModelPrice | None = Field(
        default=None,
        description='USD per million tokens, {"input": 2.5, "output": 10, "cached_input": 1.25}: '
        "steps' costs, and what `budget: {cost: ...}` counts. A cost budget on a model without "
        "one is refused (ModelUnpriced).",
    )


class Settings(BaseSettings):
    """Every field reads the environment variable `STEPFLOW_<FIELD>`, else the project's file.

    The project's file is the nearest `stepflow.toml` (or `pyproject.toml` with a
    `[tool.stepflow]` table) at or above the current directory (`runtime.project`).
    """

    # hide_input_in_errors: an invalid key must not be printed with the error about it.
    model_config = SettingsConfigDict(
        env_prefix=_PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    task_queue: str = Field(default="stepflow", description="Task queue the worker serves.")
    tool_modules: CommaList = Field(
        default_factory=list,
        description="Comma-separated modules to import for their @tool functions.",
    )
    import_path: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Directories to import tool modules from, separated like PYTHONPATH "
        "(`:`); `.` is the directory the worker or command starts in. Default: none, not even "
        "the current directory.",
    )
    schema_modules: CommaList = Field(
        default_factory=list,
        description="Comma-separated modules (with the modules inside them) that "
        "`output_schema: package.module:Model` may import, besides the tool modules.",
    )
    home: Path = Field(
        default=Path(".stepflow"),
        description="Local state: the dev server's SQLite file, logs, pid files.",
    )
    dev_sqlite_synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description="How a file-backed dev server's commits reach the disk: normal (a killed "
        "server loses nothing; a power loss may lose the last commits) or full (every commit "
        "waits for the disk: nothing lost to a power loss, each step slower).",
    )
    workspace: Path = Field(
        default=Path(".stepflow/workspace"),
        description="The only directory the file tools may read and write.",
    )
    http_allow_hosts: CommaList = Field(
        default_factory=list,
        description="Hosts the http_get tool may fetch from; empty means none.",
    )
    http_max_bytes: int = Field(default=1_000_000, ge=1, description="Largest body http_get reads.")
    http_timeout_seconds: float = Field(
        default=20.0, gt=0, description="Deadline of a whole http_get call, redirects included."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: readable on a terminal, JSON lines otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The lowest level logged."
    )
    log_content: bool = Field(
        default=False, description="Log tool arguments and outputs (off: they may be private)."
    )
    ui_url: str = Field(
        default="http://localhost:8233", description="Base of the Temporal Web UI, for run links."
    )
    workflow_sandbox: bool = Field(
        default=False,
        description="Run Stepflow's workflow code in the SDK's sandbox, which checks it at run "
        "time (slower; its tests replay every committed history in the sandbox either way).",
    )
    max_concurrent_activities: int = Field(
        default=100, ge=1, description="Activities (model and tool calls) a worker runs at once."
    )
    default_model: str = Field(
        default="gpt-4o-mini", description="The model of agent steps that name none."
    )
    models: dict[str, ModelSettings] = Field(
        default_factory=dict,
        description='Per-model settings as JSON: {"name": {"base_url": ..., "api_key_env": ...}}.',
    )

    mcp_servers: Annotated[dict[str, McpServerConfig], NoDecode] = Field(
        default_factory=dict,
        description='MCP servers whose tools pipelines use as SERVER.TOOL, as JSON: {"files": '
        '{"command": "npx", "args": [...], "env": {...}}, "search": {"url": "https://...", '
        '"headers": {"Authorization": "Bearer ${TOKEN}"}}}; ${VAR} is read from the '
        "environment when connecting.",
    )

    # -- worker tuning --
    # Client and workers must read the same routing (the client stamps it into each run).
    max_concurrent_workflow_tasks: int = Field(
        default=100, ge=2, description="Workflow tasks a worker runs at once (at least 2)."
    )
    model_task_queue: str | None = Field(
        default=None, description="Task queue of model calls; unset: the main queue."
    )
    tool_task_queues: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='Task queue per tool: "tool=queue,tool2=queue" or JSON; others: main queue.',
    )
    model_calls_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Model calls per second on the model queue, all its workers together.",
    )
    worker_serve: CommaList = Field(
        default_factory=list,
        description="Queues a worker process serves: workflows, models, tools, tools:QUEUE; "
        "empty: every configured queue.",
    )

    # -- telemetry --
    tracing: Literal["off", "console", "otlp"] = Field(
        default="off",
        description="OpenTelemetry spans of runs, steps, model and tool calls: off, console "
        "(JSON lines on stderr) or otlp (OTEL_EXPORTER_OTLP_*; needs opentelemetry-exporter-otlp).",
    )
    metrics_bind: str | None = Field(
        default=None,
        description="host:port where a worker serves Prometheus metrics at /metrics, "
        "e.g. 0.0.0.0:9464; unset: no metrics.",
    )

    # -- encryption --
    # Keys are checked here, so a bad one stops the worker or a command at start with one line
    # naming the variable; no message ever holds key material (runtime/encryption.py).
    encryption_key: SecretStr | None = Field(
        default=None,
        description="AES-256 keys, base64 of 32 bytes each: KEY, or ID:KEY,ID2:KEY2 (the first "
        "encrypts, every one decrypts). Set: payloads are encrypted. Worker and client alike.",
    )
    encryption_key_file: Path | None = Field(
        default=None,
        description="A file holding the keys instead, written as STEPFLOW_ENCRYPTION_KEY has "
        "them (one per line or comma-separated; # comments).",
    )
    codec_server_token: SecretStr | None = Field(
        default=None,
        description="The bearer token `stepflow codec-server` requires (16 characters or more).",
    )
    codec_server_origins: CommaList = Field(
        default_factory=list,
        description="Web UI origins the codec server answers (CORS), comma-separated; "
        "default: the origin of STEPFLOW_UI_URL.",
    )

    # -- tool safety --
    # Defaults for tools whose @tool names no limit of its own. Outputs of 256 KiB or more go to
    # the payload store, so these bound memory and storage, not Temporal's payload limit; they
    # are equal because one tool's output is often the next one's argument.
    tool_max_request_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        description="Largest arguments (as JSON) a tool call may carry, unless the tool's @tool "
        "sets max_request_bytes.",
    )
    tool_max_output_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        description="Largest result (as JSON) a tool call may return, unless the tool's @tool "
        "sets max_output_bytes.",
    )

    @field_validator("encryption_key", "encryption_key_file", "codec_server_token", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("encryption_key")
    @classmethod
    def _check_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from stepflow.runtime.encryption import EncryptionError, parse_keys

            try:
                parse_keys(value.get_secret_value())
            except EncryptionError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("encryption_key_file")
    @classmethod
    def _check_key_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            if info.data.get("encryption_key") is not None:
                raise ValueError("set this or STEPFLOW_ENCRYPTION_KEY, not both")
            from stepflow.runtime.encryption import EncryptionError, read_key_file

            try:
                read_key_file(value)
            except EncryptionError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("codec_server_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("too short: use 16 characters or more, e.g. `openssl rand -hex 32`")
        return value

    @field_validator("codec_server_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("dev_sqlite_synchronous", mode="before")
    @classmethod
    def _pragma_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value  # SQLite ignores case

    @field_validator("model_task_queue", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("model_task_queue")
    @classmethod
    def _own_model_queue(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("task_queue"):
            raise ValueError(
                f"{value!r} is the main queue (STEPFLOW_TASK_QUEUE); unset it to keep model "
                "calls there, or name a queue of their own"
            )
        return value

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _parse_mcp_servers(cls, value: object) -> object:
        return parse_servers(value)

    @field_validator("tool_task_queues", mode="before")
    @classmethod
    def _parse_tool_queues(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"not valid JSON: {err}") from None
        routes: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            tool, sep, queue = (s.strip() for s in part.partition("="))
            if not sep or not tool or not queue:
                raise ValueError(f'expected "tool=queue,tool2=queue" or JSON, got {part!r}')
            routes[tool] = queue
        return routes

    @field_validator("tool_task_queues")
    @classmethod
    def _own_tool_queues(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        taken = {
            info.data.get("task_queue"): "the main queue (STEPFLOW_TASK_QUEUE)",
            info.data.get("model_task_queue"): "the model queue (STEPFLOW_MODEL_TASK_QUEUE)",
        }
        for tool, queue in value.items():
            if not tool or not queue.strip():
                raise ValueError(f"empty tool or queue name in {tool!r}: {queue!r}")
            if queue in taken:
                raise ValueError(
                    f"tool {tool!r} is routed to {queue!r}, which is {taken[queue]}; "
                    "give heavy tools a queue of their own, or leave them out"
                )
        return value

    @field_validator("model_calls_per_second")
    @classmethod
    def _limit_needs_model_queue(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not info.data.get("model_task_queue"):
            raise ValueError(
                "needs STEPFLOW_MODEL_TASK_QUEUE: the limit holds for a whole task queue, "
                "and the main queue also carries workflows and tools"
            )
        return value

    @field_validator("worker_serve", mode="before")
    @classmethod
    def _split_serve(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # -- large outputs --
    payload_store: Literal["local", "s3", "off"] = Field(
        default="local",
        description="Where payloads over the threshold go instead of history: a local directory, "
        "S3 (the `s3` extra), or off (over 2 MB fails the step).",
    )
    payload_dir: Path | None = Field(
        default=None,
        description="The local payload store's directory; default: <home>/payloads. "
        "Worker and client must see the same one.",
    )
    payload_threshold_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        le=2 * 1024 * 1024 - 4096,
        description="Payloads of at least this many bytes are stored outside history.",
    )
    payload_s3_bucket: str | None = Field(
        default=None,
        description="The bucket of the S3 payload store (credentials, region, endpoint: AWS_*).",
    )
    payload_retention: PositiveDuration = Field(
        default=timedelta(days=30),
        description="How long `stepflow payloads prune` keeps a stored payload that no open "
        "run uses, after it was last stored: 30d, 12h... (longer than the namespace's retention "
        "if finished runs' results must stay readable).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then `STEPFLOW_*` variables, then the project's file, then defaults."""
        sources = (init_settings, env_settings, dotenv_settings, file_secret_settings)
        project = find_project(Path.cwd())
        if project is None:
            return sources
        values = project_values(project, list(settings_cls.model_fields))
        return (*sources, InitSettingsSource(settings_cls, init_kwargs=values))

    @field_validator("import_path", mode="before")
    @classmethod
    def _split_path(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("tool_modules", "schema_modules", "http_allow_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


# The process's environment as the interpreter keeps it (CPython's `os.environ` holds
# its variables in `_data`, a plain dict that `os.environ[...] = ...` and `del` update).
_ENVIRON: Mapping[Any, Any] = getattr(os.environ, "_data", os.environ)
_parsed: tuple[dict[Any, Any], str, Settings] | None = None


def get_settings() -> Settings:
    """The settings as the environment says now.

    Every tool and model call asks, and parsing takes about 0.5 ms (measured by
    bench/overhead.py as 8% of a step), so the settings are parsed again only
    when the environment or the working directory has changed since the last
    call. Frozen: what one caller gets, every caller shares.
    """
    global _parsed
    # Comparing with a copy of the whole environment is one C-level dict comparison,
    # about 1 us; picking out the STEPFLOW_* variables in Python first took 23 us a call.
    cwd = os.getcwd()  # another directory may be another project
    if _parsed is None or _parsed[1] != cwd or _parsed[0] != _ENVIRON:
        _parsed = (dict(_ENVIRON), cwd, Settings())
    return _parsed[2]
