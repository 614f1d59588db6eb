"""Every test has a deadline, and a stuck test says what it was waiting for.

A regression that leaves a run stuck must fail its test in a minute or two, not
hang CI for its whole time limit. An async test past its deadline is cancelled
where it awaits, and fails with the stack of the line it was stuck on and what
the other tasks on the loop were waiting for. A sync test gets the same
deadline from pytest-timeout (configured in pyproject.toml), which dumps the
stacks of every thread.

    @pytest.mark.deadline(300)   # this test may take longer than the default
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import io
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

DEFAULT_SECONDS = float(os.environ.get("STEPFLOW_TEST_DEADLINE", "120"))
"""A test's deadline unless it is marked; tests here take 0.1-40 s."""

MAX_OTHER_TASKS = 12
"""Tasks listed besides the test's own: enough to see the worker's pollers and a run's waits."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deadline(seconds): fail the test if it runs longer (default 120 s)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-timeout stops a sync test at its deadline, and an async one soon after ours.

    Its signal method fails just that test with every thread's stack; for async tests
    it is only the backstop for a loop that never gets to run our cancel.
    """
    for item in items:
        seconds = deadline_of(item)
        is_async = asyncio.iscoroutinefunction(getattr(item, "obj", None))
        item.add_marker(pytest.mark.timeout(seconds + 60 if is_async else seconds))


TEARDOWN_SECONDS = float(os.environ.get("STEPFLOW_TEST_TEARDOWN_DEADLINE", "90"))
"""A fixture's teardown (a worker shutting down, a server stopping) gets this long."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """A teardown that hangs ends the session with every thread's stack, instead of CI's limit.

    pytest-timeout fires once per test: when the test itself ran out of time, a worker
    whose shutdown then waits for a stuck activity would hang with no timer left.
    """
    fd = _real_stderr(item)

    def give_up() -> None:
        os.write(
            fd,
            f"\n{item.nodeid}: teardown still running after {TEARDOWN_SECONDS:g} s; "
            "every thread's stack:\n".encode(),
        )
        faulthandler.dump_traceback(file=fd, all_threads=True)
        os._exit(1)

    timer = threading.Timer(TEARDOWN_SECONDS, give_up)
    timer.daemon = True
    timer.start()
    try:
        return (yield)
    finally:
        timer.cancel()


def _real_stderr(item: pytest.Item) -> int:
    """The terminal's stderr: pytest captures fd 2, and a capture is lost when the process ends."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    saved = getattr(
        getattr(getattr(capture, "_global_capturing", None), "err", None), "targetfd_save", None
    )
    return saved if isinstance(saved, int) else 2


def deadline_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("deadline")
    return float(marker.args[0]) if marker else DEFAULT_SECONDS


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Wrap an async test in its deadline before pytest-asyncio turns it into a sync call."""
    function = getattr(item, "obj", None)
    if function is not None and asyncio.iscoroutinefunction(function):
        item.obj = _with_deadline(function, deadline_of(item), item.nodeid)  # type: ignore[attr-defined]
    try:
        return (yield)
    finally:
        if function is not None:
            item.obj = function  # type: ignore[attr-defined]


def _with_deadline(
    function: Callable[..., Coroutine[Any, Any, Any]], seconds: float, name: str
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(function)
    async def run(*args: Any, **kwargs: Any) -> Any:
        test = asyncio.current_task()
        loop = asyncio.get_running_loop()
        report: list[str] = []

        def expire() -> None:
            # Read the stacks before the cancel unwinds them: this is what the test waited on.
            report.append(_what_tasks_await(test))
            if test is not None:
                test.cancel(f"deadline of {seconds:g} s")

        timer = loop.call_later(seconds, expire)
        try:
            return await function(*args, **kwargs)
        except asyncio.CancelledError:
            if not report:
                raise
            pytest.fail(
                f"{name} ran past its deadline of {seconds:g} s (mark it "
                f"@pytest.mark.deadline(N) if it needs longer).\n{report[0]}",
                pytrace=True,
            )
        finally:
            timer.cancel()

    return run


def _what_tasks_await(test: asyncio.Task[Any] | None) -> str:
    out = io.StringIO()
    if test is not None:
        out.write("The test was waiting here (outermost first):\n")
        out.writelines(f"  {line}\n" for line in _await_chain(test))
    others = [t for t in asyncio.all_tasks() if t is not test and not t.done()]
    if others:
        out.write(f"Other tasks on the loop ({len(others)}), where they wait:\n")
        for task in others[:MAX_OTHER_TASKS]:
            chain = _await_chain(task)
            out.write(f"  {task.get_name()}: {chain[-1] if chain else 'not started'}\n")
    return out.getvalue()


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """Where a task's coroutine waits, one line per awaited coroutine down the chain.

    `Task.print_stack` shows only the task's own frame; the line that matters is
    usually several awaits deeper (a `get_result`, a `wait_condition`).
    """
    lines = []
    awaitable: Any = task.get_coro()
    for _ in range(50):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        if not code.co_filename.endswith("deadline.py"):
            lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return lines
