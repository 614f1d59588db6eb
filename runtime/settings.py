"""Stepflow's own settings, from `STEPFLOW_*` environment variables.

Temporal connection settings (address, namespace, API key, TLS, profiles) are
not here: they come from `temporalio.envconfig` (see `runtime.connection`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


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
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Default request parameters, e.g. temperature or max_completion_tokens.",
    )
    structured_output: bool = Field(
        default=True,
        description="Send `response_format` with the output schema (off for servers without it).",
    )


class Settings(BaseSettings):
    """Every field reads the environment variable `STEPFLOW_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="STEPFLOW_", extra="ignore")

    task_queue: str = Field(default="stepflow", description="Task queue the worker serves.")
    tool_modules: CommaList = Field(
        default_factory=list,
        description="Comma-separated modules to import for their @tool functions.",
    )
    home: Path = Field(
        default=Path(".stepflow"),
        description="Local state: the dev server's SQLite file, logs, pid files.",
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
    http_timeout_seconds: float = Field(default=20.0, gt=0)
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: readable on a terminal, JSON lines otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_content: bool = Field(
        default=False, description="Log tool arguments and outputs (off: they may be private)."
    )
    ui_url: str = Field(
        default="http://localhost:8233", description="Base of the Temporal Web UI, for run links."
    )
    max_concurrent_activities: int = Field(default=100, ge=1)
    default_model: str = Field(
        default="gpt-4o-mini", description="The model of agent steps that name none."
    )
    models: dict[str, ModelSettings] = Field(
        default_factory=dict,
        description='Per-model settings as JSON: {"name": {"base_url": ..., "api_key_env": ...}}.',
    )

    @field_validator("tool_modules", "http_allow_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def get_settings() -> Settings:
    """The settings as the environment says now (read at each call: cheap, and tests change it)."""
    return Settings()
