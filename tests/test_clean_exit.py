"""A program that used a Stepflow client exits with its own exit code, not an abort.

The Temporal SDK hands results over from threads of its own; a script that ends
right after its last call could abort in Python's shutdown (temporalio/sdk-python#300).
`runtime.clean_exit` makes the exit wait for those threads.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.runtime import clean_exit
from stepflow.runtime.plugin import StepflowPlugin
from stepflow.runtime.settings import Settings
from tests.support.processes import ROOT, process_env

FOREIGN_THREAD = """
import _thread, time
from stepflow.runtime import clean_exit

def hand_over():  # as the SDK's threads do: Python code, run by a thread `threading` did not start
    time.sleep(0.3)
    print("handed over", flush=True)

if {install}:
    clean_exit.install()
_thread.start_new_thread(hand_over, ())
time.sleep(0.05)
print("script done", flush=True)
"""


def run_script(text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(text)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_exit_waits_for_a_thread_still_in_python() -> None:
    guarded = run_script(FOREIGN_THREAD.format(install=True))
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout.split() == ["script", "done", "handed", "over"]

    # Without the hook Python's shutdown ends that thread midway: what the SDK does not survive.
    unguarded = run_script(FOREIGN_THREAD.format(install=False))
    assert "handed over" not in unguarded.stdout


def test_the_exit_does_not_wait_for_threads_that_threading_knows() -> None:
    """A daemon thread that never ends does not hold the exit for `MAX_WAIT`."""
    import threading
    import time

    stop = threading.Event()
    daemon = threading.Thread(target=stop.wait, daemon=True)
    daemon.start()
    try:
        started = time.monotonic()
        clean_exit.let_sdk_threads_finish(grace=0, max_wait=5)
        assert time.monotonic() - started < 1
    finally:
        stop.set()


async def test_a_client_with_stepflows_plugin_installs_the_hook(
    temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clean_exit, "_installed", False)  # as in a new process
    target = temporal_env.client.service_client.config.target_host
    await Client.connect(target, plugins=[StepflowPlugin(Settings())])
    assert clean_exit.installed()


ONE_STEP = """
name: one-step
steps:
  - id: same
    kind: tool
    tool: echo
    args: {value: hello}
outputs:
  value: "{{ steps.same.output }}"
"""

CLIENT_SCRIPT = """
import asyncio
from stepflow import StepflowClient

async def main():
    client = await StepflowClient.connect()
    result = await client.run_pipeline("one_step.yaml")
    print(result.status, result.outputs["value"])

asyncio.run(main())
"""


async def test_client_scripts_end_with_exit_code_0(
    worker: None, temporal_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """Without the hook, about one run in ten of this script aborted here after its result."""
    (tmp_path / "one_step.yaml").write_text(ONE_STEP)
    env = process_env(
        temporal_env.client.service_client.config.target_host, STEPFLOW_TASK_QUEUE=task_queue
    )
    for _ in range(10):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT_SCRIPT,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert (process.returncode, stdout) == (0, b"SUCCEEDED hello\n"), stderr.decode()
