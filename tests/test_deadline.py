"""The suite's own deadline: a stuck test fails soon, naming the line it was stuck on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT


def run_pytest(
    test_file: Path, *ini: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """pytest on one file in a process of its own, with only the deadline plugin loaded."""
    options = [arg for option in ("asyncio_mode=auto", *ini) for arg in ("-o", option)]
    plugin = ["-p", "tests.support.deadline", "-c", "/dev/null"]
    where = ["--rootdir", str(test_file.parent), str(test_file)]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugin, *options, *where],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


STUCK = """
import asyncio, time
import pytest

async def _wait_for_nothing() -> None:
    await asyncio.Event().wait()

@pytest.mark.deadline(1)
async def test_stuck_async() -> None:
    await _wait_for_nothing()

@pytest.mark.deadline(1)
def test_stuck_sync() -> None:
    time.sleep(30)

async def test_quick() -> None:
    await asyncio.sleep(0)
"""


def test_a_stuck_test_fails_at_its_deadline_and_says_where_it_waited(tmp_path: Path) -> None:
    test_file = tmp_path / "test_stuck.py"
    test_file.write_text(STUCK)
    done = run_pytest(test_file, "timeout_method=signal")
    out = done.stdout
    assert done.returncode == 1, out
    assert "2 failed, 1 passed" in out
    assert "test_stuck_async ran past its deadline of 1 s" in out
    # The await chain reaches the helper the test was stuck in, not just the test's own line.
    line = STUCK.splitlines().index("    await asyncio.Event().wait()") + 1
    assert f"{test_file}:{line} in _wait_for_nothing" in out
    assert "Timeout (>1.0s) from pytest-timeout" in out


HANGING_TEARDOWN = """
import asyncio
import pytest

@pytest.fixture
async def stuck():
    yield
    await asyncio.Event().wait()  # a worker that never finishes shutting down, say

async def test_teardown_hangs(stuck) -> None:
    await asyncio.sleep(0)
"""


def test_a_hanging_teardown_ends_the_session_naming_the_test(tmp_path: Path) -> None:
    test_file = tmp_path / "test_teardown.py"
    test_file.write_text(HANGING_TEARDOWN)
    done = run_pytest(
        test_file,
        "asyncio_default_fixture_loop_scope=session",
        "timeout=0",
        env={**os.environ, "STEPFLOW_TEST_TEARDOWN_DEADLINE": "2"},
    )
    assert done.returncode == 1
    assert "test_teardown.py::test_teardown_hangs: teardown still running after 2 s" in done.stderr
    assert "in give_up" in done.stderr  # followed by every thread's stack
