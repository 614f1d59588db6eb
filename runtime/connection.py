"""Connecting to Temporal through `temporalio.envconfig`.

TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*,
TEMPORAL_PROFILE and the TOML config file all work as in the `temporal` CLI,
so the same worker runs against a laptop, a cluster or Temporal Cloud.
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig

DEFAULT_ADDRESS = "localhost:7233"


class ConnectionFailed(RuntimeError):
    """Temporal could not be reached or the connection settings are wrong."""


def connect_config(profile: str | None = None) -> dict[str, Any]:
    """The keyword arguments for `Client.connect`, from the environment and config file."""
    try:
        config: dict[str, Any] = dict(ClientConfig.load_client_connect_config(profile=profile))
    except Exception as err:
        raise ConnectionFailed(f"bad Temporal connection settings: {err}") from err
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if not config.get("target_host"):
        config["target_host"] = DEFAULT_ADDRESS
    return config


async def connect(profile: str | None = None) -> Client:
    """A client with Stepflow's data converter.

    Raises:
        ConnectionFailed: with the address and a hint, instead of a gRPC stack trace.
    """
    config = connect_config(profile)
    try:
        return await Client.connect(**config, data_converter=pydantic_data_converter)
    except Exception as err:
        address = config["target_host"]
        raise ConnectionFailed(
            f"cannot connect to Temporal at {address} "
            f"(namespace {config.get('namespace', 'default')}): {err}. "
            "Is the server running? Start one with `make demo` or `python worker.py --dev`, "
            "or point TEMPORAL_ADDRESS at yours."
        ) from err
