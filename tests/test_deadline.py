"""The suite's own deadline: a stuck test fails soon, naming the line it was stuck on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT

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
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.support.deadline",
            "-c",
            "/dev/null",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "timeout_method=signal",
            "--rootdir",
            str(tmp_path),
            str(test_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout
    assert done.returncode == 1, out
    assert "2 failed, 1 passed" in out
    assert "test_stuck_async ran past its deadline of 1 s" in out
    # The await chain reaches the helper the test was stuck in, not just the test's own line.
    line = STUCK.splitlines().index("    await asyncio.Event().wait()") + 1
    assert f"{test_file}:{line} in _wait_for_nothing" in out
    assert "Timeout (>1.0s) from pytest-timeout" in out
