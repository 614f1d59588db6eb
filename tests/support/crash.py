"""What the crash tests share: a file-backed dev server they can SIGKILL and start again,
waits on the tools' journal and on the heartbeats the server holds, and per-step outputs to
compare a disturbed run with a calm one."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from stepflow.client.api import StepflowClient
from stepflow.runtime.devserver import dev_server_args, is_listening, temporal_binary
from stepflow.workflows.models import PipelineResult
from tests.support.processes import free_port
from tests.support.tools import journal_read


class FileBackedServer:
    """`temporal server start-dev` on a SQLite file, which a test can SIGKILL and start again.

    Restarted on the same file and port, it is the same server to its clients and workers:
    the runs, their histories and their timers are all in the file.

        with FileBackedServer(tmp_path) as server:
            client = await server.connect()
            ...
            server.kill()                 # SIGKILL: no chance to flush or say goodbye
            await server.restart()        # same file, same port
    """

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.db_file = directory / "temporal.db"
        self.log = directory / "server.log"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        args = dev_server_args(db_file=self.db_file, port=self.port, ui_port=None)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [temporal_binary(), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

    async def start(self, timeout: float = 60) -> None:
        """Start the server and return once it answers on its port."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is already running")
        self._spawn()
        await self._wait_ready(timeout)

    async def restart(self, timeout: float = 60) -> None:
        """Start it again on the same database file and port (after `kill`)."""
        await self.start(timeout)

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone and its port is free."""
        process = self.process
        if process is None or process.poll() is not None:
            raise RuntimeError("the server is not running")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while is_listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (then SIGKILL if it lingers); for the end of a test."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    async def connect(self) -> Client:
        """A client with Stepflow's data converter (it reconnects by itself after a restart)."""
        return await Client.connect(
            self.address, namespace="default", data_converter=pydantic_data_converter
        )

    async def _wait_ready(self, timeout: float) -> None:
        """Until a client can connect and the server reports itself healthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"the dev server exited with {self.process.returncode}:\n{self._log_tail()}"
                )
            if is_listening(self.port):
                try:
                    client = await self.connect()
                    if await client.service_client.check_health():
                        return
                except Exception:  # still starting: not serving yet
                    pass
            if loop.time() > deadline:
                raise AssertionError(f"the dev server was not ready in {timeout} s")
            await asyncio.sleep(0.1)

    def _log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def __enter__(self) -> FileBackedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a worker subprocess (SIGKILL if it does not go), for the end of a test."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def sigkill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker subprocess and wait until it is gone."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


async def wait_for_journal(
    journal: str, condition: Callable[[list[dict[str, Any]]], bool], limit: float = 30
) -> list[dict[str, Any]]:
    """Poll the tools' journal until `condition` holds; its entries then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        entries = journal_read(journal)
        if condition(entries):
            return entries
        assert loop.time() < deadline, f"journal never met the condition: {entries}"
        await asyncio.sleep(0.05)


def has(event: str, step: str, **fields: Any) -> Callable[[list[dict[str, Any]]], bool]:
    """A `wait_for_journal` condition: an entry of `event` by `step` (with these fields)."""

    def condition(entries: list[dict[str, Any]]) -> bool:
        return any(
            e["event"] == event
            and e["step"] == step
            and all(e.get(k) == v for k, v in fields.items())
            for e in entries
        )

    return condition


def starts(journal: str) -> Counter[str]:
    """How many times each step's tool started, across every worker process."""
    return Counter(e["step"] for e in journal_read(journal) if e["event"] == "start")


def outputs(result: PipelineResult) -> dict[str, Any]:
    """Each step's status and output: what must match between a disturbed and a calm run."""
    return {r.id: (r.status, r.output) for r in result.steps}


async def reference_run(
    stepflow: StepflowClient, spec: Any, inputs: dict[str, Any] | None = None
) -> PipelineResult:
    """The same pipeline run undisturbed (a worker must be serving its queue)."""
    run = await stepflow.start_pipeline(spec, inputs)
    return await stepflow.get_result(run.workflow_id)


async def pending_heartbeats(client: Client, workflow_id: str) -> list[Any]:
    """The last heartbeat details the server holds for each running activity of a run."""
    description = await client.get_workflow_handle(workflow_id).describe()
    details = []
    for pending in description.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            decoded = await client.data_converter.decode(pending.heartbeat_details.payloads)
            details.append(decoded[0] if len(decoded) == 1 else decoded)
    return details


async def wait_for_heartbeat(
    client: Client, workflow_id: str, expected: Any, limit: float = 30
) -> None:
    """Until the server has recorded `expected` as a running activity's heartbeat details."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while expected not in (seen := await pending_heartbeats(client, workflow_id)):
        assert loop.time() < deadline, f"heartbeat {expected} never recorded; last seen {seen}"
        await asyncio.sleep(0.1)
