"""The embedded dev server's SQLite file: WAL mode, what survives a SIGKILL, old files switched over."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from stepflow.runtime.devserver import (
    dev_server_args,
    ensure_dev_server,
    is_listening,
    stop_all,
    temporal_binary,
    tuned_flags,
)
from stepflow.runtime.settings import Settings
from tests.support.processes import free_port


def journal_mode(db_file: Path) -> str:
    """What SQLite reads from the file's header (WAL mode is stored in the file)."""
    with sqlite3.connect(db_file) as db:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0])


async def connect_when_healthy(port: int, limit: float = 60) -> Client:
    """A client, once the server's frontend says it is healthy (it listens a moment before)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return await Client.connect(f"127.0.0.1:{port}")
        except RuntimeError as err:
            if "not healthy" not in str(err) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def start_a_run(port: int) -> str:
    """Write something to the server: a run that waits for a worker that never comes."""
    client = await connect_when_healthy(port)
    workflow_id = f"kept-{uuid.uuid4().hex[:8]}"
    await client.start_workflow("never_served", id=workflow_id, task_queue=workflow_id)
    return workflow_id


async def status_of(port: int, workflow_id: str) -> WorkflowExecutionStatus | None:
    client = await Client.connect(f"127.0.0.1:{port}")
    return (await client.get_workflow_handle(workflow_id).describe()).status


def wait_until_free(port: int) -> None:
    deadline = time.monotonic() + 10
    while is_listening(port):
        assert time.monotonic() < deadline, f"port {port} still answers after the kill"
        time.sleep(0.05)


def start_the_old_way(db_file: Path, port: int) -> subprocess.Popen[bytes]:
    """A dev server on `db_file` as Stepflow started one before: no pragmas, SQLite's defaults."""
    args = ["server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless"]
    server = subprocess.Popen(
        [temporal_binary(), *args, "--db-filename", str(db_file), *tuned_flags()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not is_listening(port):
        assert server.poll() is None, f"the old-style server exited with {server.returncode}"
        assert time.monotonic() < deadline, "the old-style server did not listen in 60 s"
        time.sleep(0.1)
    return server


def test_every_file_backed_server_gets_wal_and_synchronous_normal(tmp_path: Path) -> None:
    args = dev_server_args(db_file=tmp_path / "t.db", port=7233, ui_port=None, settings=Settings())
    assert ["--db-filename", str(tmp_path / "t.db")] == args[args.index("--db-filename") :][:2]
    assert "journal_mode=wal" in args and "synchronous=normal" in args
    in_memory = dev_server_args(db_file=None, port=7233, ui_port=None, settings=Settings())
    assert "--sqlite-pragma" not in in_memory


def test_the_stricter_setting_comes_back_with_one_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_DEV_SQLITE_SYNCHRONOUS", "full")
    args = dev_server_args(db_file=tmp_path / "t.db", port=7233, ui_port=None)
    assert "synchronous=full" in args and "synchronous=normal" not in args
    assert "journal_mode=wal" in args
    with pytest.raises(ValueError, match="dev_sqlite_synchronous"):
        Settings(dev_sqlite_synchronous="off")


async def test_embedded_server_runs_in_wal_mode_and_a_sigkill_loses_no_commit(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home")
    db_file = tmp_path / "home" / "temporal.db"
    port, ui_port = free_port(), free_port()
    try:
        assert ensure_dev_server(settings, port=port, ui_port=ui_port) is True
        assert journal_mode(db_file) == "wal"
        workflow_id = await start_a_run(port)

        # No chance to copy the WAL into the database, or to close the file.
        pid = int((tmp_path / "home" / "server.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_until_free(port)

        assert ensure_dev_server(settings, port=port, ui_port=ui_port) is True
        assert await status_of(port, workflow_id) == WorkflowExecutionStatus.RUNNING
        assert journal_mode(db_file) == "wal"
    finally:
        stop_all(settings)


async def test_a_database_from_before_wal_is_switched_in_place_at_the_next_start(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db_file = home / "temporal.db"
    port, ui_port = free_port(), free_port()
    old = start_the_old_way(db_file, port)
    try:
        workflow_id = await start_a_run(port)
    finally:
        old.terminate()
        old.wait(timeout=30)
    assert journal_mode(db_file) == "delete"

    settings = Settings(home=home)
    try:
        assert ensure_dev_server(settings, port=port, ui_port=ui_port) is True
        assert journal_mode(db_file) == "wal"
        assert await status_of(port, workflow_id) == WorkflowExecutionStatus.RUNNING
    finally:
        stop_all(settings)
    assert journal_mode(db_file) == "wal"  # kept in the file, whatever starts it next
