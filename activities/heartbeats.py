"""Heartbeats while an activity awaits something slow: a model's reply, an MCP server's tool.

A lost worker's call is then retried after the heartbeat timeout rather than the
whole start-to-close timeout, and a cancel (the step or the run was cancelled)
reaches the activity with a heartbeat's response and ends the wait with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")

HEARTBEAT_EVERY = 5.0
"""Seconds between heartbeats (the SDK throttles them further), at most a third of the timeout."""


async def with_heartbeats(work: Awaitable[T]) -> T:
    """Await `work`, heartbeating meanwhile; `work` is cancelled if this is."""
    timeout = activity.info().heartbeat_timeout
    every = min(HEARTBEAT_EVERY, timeout.total_seconds() / 3) if timeout else HEARTBEAT_EVERY
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
