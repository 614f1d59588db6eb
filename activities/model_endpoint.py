"""Which model answers a step's `model:` name, where it lives, and with which key.

Resolved on the worker at call time from its environment and settings, so
API keys never travel through workflow inputs or history.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from stepflow.runtime.settings import ModelPrice, Settings
from stepflow.workflows.models import OFFLINE_MODEL


class ModelNotConfigured(Exception):
    """A configured model whose key or address is missing from the worker's environment."""


@dataclass(frozen=True)
class ModelEndpoint:
    name: str = field(metadata={"doc": "What results and logs call it; `offline` for built-in."})
    provider_model: str = ""
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    params: dict[str, Any] = field(default_factory=dict)
    structured_output: bool = True
    context_tokens: int | None = None
    price: ModelPrice | None = field(
        default=None, metadata={"doc": "USD per million tokens; None: unpriced (no cost budget)."}
    )

    @property
    def offline(self) -> bool:
        return self.name == OFFLINE_MODEL


FREE = ModelPrice(input=0, output=0)
"""The offline model's price unless the configuration gives it one: it costs nothing."""

OFFLINE_ENDPOINT = ModelEndpoint(name=OFFLINE_MODEL, provider_model=OFFLINE_MODEL, price=FREE)


def offline_endpoint(settings: Settings) -> ModelEndpoint:
    """The built-in offline model: free, unless `STEPFLOW_MODELS` prices `offline` (a demo of
    cost budgets without a key)."""
    configured = settings.models.get(OFFLINE_MODEL)
    if configured is None or configured.price is None:
        return OFFLINE_ENDPOINT
    return replace(OFFLINE_ENDPOINT, price=configured.price)


def resolve_endpoint(name: str | None, settings: Settings) -> ModelEndpoint:
    """The endpoint for a step's model name (None: the worker's default model).

    The built-in offline model answers when the step asks for `offline`, or
    when nothing at all is configured: no OPENAI_API_KEY, no OPENAI_BASE_URL
    and no per-model settings for the name. A model with its own settings but
    no key and no address is an error, not a silent switch to offline.
    """
    name = name or settings.default_model
    if name == OFFLINE_MODEL:
        return offline_endpoint(settings)
    configured = settings.models.get(name)
    # An empty variable (`OPENAI_BASE_URL=` in an env file) means unset, as for the key.
    base_url = (
        (configured.base_url if configured else None) or os.environ.get("OPENAI_BASE_URL") or None
    )
    key_env = configured.api_key_env if configured else "OPENAI_API_KEY"
    api_key = os.environ.get(key_env) or None
    if base_url is None and api_key is None:
        if configured is None:
            return offline_endpoint(settings)
        raise ModelNotConfigured(
            f"model {name!r} is configured but the worker has neither {key_env} "
            "nor a base_url for it"
        )
    return ModelEndpoint(
        name=name,
        provider_model=(configured.provider_model if configured else None) or name,
        base_url=base_url,
        # Local OpenAI-compatible servers (vLLM, Ollama) need no key, but the client wants one.
        api_key=api_key or "not-needed",
        params=dict(configured.params) if configured else {},
        structured_output=configured.structured_output if configured else True,
        context_tokens=configured.context_tokens if configured else None,
        price=configured.price if configured else None,
    )
