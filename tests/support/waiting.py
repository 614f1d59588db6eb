"""Waiting on observable state with a deadline: a poll that can never end is a hung CI run."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], object | Awaitable[object]],
    what: str,
    *,
    timeout: float = 30,
    interval: float = 0.05,
) -> None:
    """Poll `condition` (plain, or async when what it checks needs a call to the server)
    until it is true.

    Raises:
        AssertionError: not true within `timeout` seconds; the message says `what` was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], object], what: str, *, timeout: float = 30, interval: float = 0.05
) -> None:
    """`wait_until` for code that runs outside an event loop (tool threads, subprocess checks)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)
