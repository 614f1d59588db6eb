"""The embedded dev server that `make demo` and `python worker.py --dev` start."""

from __future__ import annotations

from pathlib import Path

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from stepflow.runtime.devserver import SEARCH_ATTRIBUTES, ensure_dev_server, is_listening, stop_all
from stepflow.runtime.settings import Settings
from tests.support.processes import free_port


async def test_dev_server_starts_once_persists_to_sqlite_and_registers_search_attributes(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home")
    port, ui_port = free_port(), free_port()
    try:
        assert ensure_dev_server(settings, port=port, ui_port=ui_port) is True
        assert ensure_dev_server(settings, port=port, ui_port=ui_port) is False  # reused
        assert (tmp_path / "home" / "temporal.db").exists()
        assert is_listening(ui_port)

        client = await Client.connect(f"127.0.0.1:{port}")
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert set(SEARCH_ATTRIBUTES) <= set(response.custom_attributes)
    finally:
        lines = stop_all(settings)
    assert any(line.startswith("dev server: stopped") for line in lines)
    assert not is_listening(port)
