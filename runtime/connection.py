"""Connecting to Temporal through `temporalio.envconfig`.

TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*,
TEMPORAL_PROFILE and the TOML config file all work as in the `temporal` CLI,
so the same worker runs against a laptop, a cluster or Temporal Cloud.
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.envconfig import ClientConfig

from runtime.payload_storage import PayloadStoreError, stepflow_data_converter
from runtime.settings import Settings, get_settings

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


async def connect(profile: str | None = None, *, settings: Settings | None = None) -> Client:
    """A client with Stepflow's data converter (`runtime.payload_storage`).

    Workers and clients connect through here, so they share the payload store
    that large results are kept in.

    Raises:
        ConnectionFailed: with the address and a hint, instead of a gRPC stack trace;
            or unusable payload store settings.
    """
    config = connect_config(profile)
    try:
        data_converter = stepflow_data_converter(settings or get_settings())
    except PayloadStoreError as err:
        raise ConnectionFailed(f"bad payload store settings: {err}") from err
    try:
        return await Client.connect(**config, data_converter=data_converter)
    except Exception as err:
        address = config["target_host"]
        raise ConnectionFailed(
            f"cannot connect to Temporal at {address} "
            f"(namespace {config.get('namespace', 'default')}): {err}. "
            "Is the server running? Start one with `make demo` or `python worker.py --dev`, "
            "or point TEMPORAL_ADDRESS at yours."
        ) from err
