"""What a new user runs into in the first hour: each mistake gets a clear answer, not silence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.registry import load_tool_modules
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from tests.support.processes import cli_process, process_env

PIPELINE = """
name: first-hour
steps:
  - {id: a, kind: tool, tool: echo, args: {value: 1}}
"""


async def test_run_says_within_seconds_that_no_worker_serves_its_queue_and_goes_on_when_one_comes(
    temporal_env: WorkflowEnvironment,
    temporal_client: Client,
    settings: Settings,
    task_queue: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_TOOL_MODULES="tests.support.tools",
    )
    process = await cli_process(env, "run", str(path))
    assert process.stderr is not None
    started = time.monotonic()
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            raw = await asyncio.wait_for(process.stderr.readline(), 30)  # type: ignore[union-attr]
            assert raw, f"the command ended before saying {text!r}:\n" + "".join(lines)
            lines.append(raw.decode())

    await read_until("no worker has picked this run up")
    noticed = time.monotonic() - started
    warning = next(line for line in lines if "no worker" in line)
    assert f"task queue {task_queue!r}" in warning and "stepflow dev start" in warning
    assert noticed < 15, noticed  # a few seconds after the start, not never

    # The run was started all along: a worker that comes now runs it to the end.
    async with build_worker(
        temporal_client, settings, tools=load_tool_modules(settings.tool_modules)
    ):
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, "".join(lines)
    assert "SUCCEEDED" in stdout.decode()
