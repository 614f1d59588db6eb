"""Run the real `stepflow` command and `worker.py` as subprocesses against the test server."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    """A port nothing listens on now (the OS picks it) for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(target_host: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "STEPFLOW_"))}
    env.update(
        {
            "STEPFLOW_SCHEMA_MODULES": "tests.support.schemas",  # as tests/conftest.py trusts
            "TEMPORAL_ADDRESS": target_host,
            "TEMPORAL_NAMESPACE": "default",
            "STEPFLOW_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
            **extra,
        }
    )
    return env


def tool_worker_env(target_host: str, task_queue: str, **extra: str) -> dict[str, str]:
    """`process_env` for a `python worker.py` (or `stepflow` command) on `task_queue` with
    the tools of tests/support/tools.py: what most tests that start processes need."""
    return process_env(
        target_host,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_TOOL_MODULES="tests.support.tools",
        **extra,
    )


@dataclass
class Completed:
    code: int
    stdout: str
    stderr: str


async def cli_process(
    env: dict[str, str], *args: str, cwd: Path = ROOT
) -> asyncio.subprocess.Process:
    """`stepflow ARGS...` started as a user would run it (the console script's entry point,
    same interpreter); read its output while it runs, or use `stepflow_cli`."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from stepflow.client.cli import entry; entry()",
        *args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def stepflow_cli(
    env: dict[str, str], *args: str, timeout: float = 60, cwd: Path = ROOT
) -> Completed:
    """`stepflow ARGS...` run to the end: its exit code and output."""
    process = await cli_process(env, *args, cwd=cwd)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    return Completed(process.returncode or 0, stdout.decode(), stderr.decode())


def ok(done: Completed) -> Completed:
    """The command exited 0; otherwise fail showing what it printed."""
    assert done.code == 0, f"exit {done.code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def one_error_line(done: Completed, *expected: str, prefix: str = "stepflow: ") -> str:
    """Exit code 2 and exactly one line on stderr, `stepflow: ...`, holding each expected text.

    Pipeline issues start with the file's name instead (as `stepflow validate` prints them):
    pass that as `prefix`.
    """
    assert done.code == 2, f"exit {done.code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(prefix), lines[0]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python worker.py` in its own process, output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_for_log(
    log: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}:\n{log.read_text()}")
        if loop.time() > deadline:
            raise AssertionError(f"{text!r} not in the worker's log within {timeout} s")
        await asyncio.sleep(0.05)
