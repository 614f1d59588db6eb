"""Tools the tests use. Each writes what it did to a journal file (JSON lines) named in its
arguments, so a test can see executions across worker processes, including killed ones."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from stepflow.activities import ToolError, tool, tool_context


def journal_write(journal: str, event: str, **fields: Any) -> None:
    """Append one line; O_APPEND keeps lines whole across processes."""
    ctx = tool_context()
    entry = {
        "event": event,
        "step": ctx.step_id,
        "attempt": ctx.attempt,
        "key": ctx.idempotency_key,
        "pid": os.getpid(),
        "time": time.time(),
        **fields,
    }
    with open(journal, "a") as f:
        f.write(json.dumps(entry) + "\n")


def journal_read(journal: str | Path) -> list[dict[str, Any]]:
    path = Path(journal)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@tool
async def record(journal: str, value: Any = None, seconds: float = 0.0) -> Any:
    """Journal a start and an end around an optional sleep; return `value`."""
    journal_write(journal, "start")
    if seconds:
        await asyncio.sleep(seconds)
    journal_write(journal, "end")
    return value


@tool
def record_sync(journal: str, value: Any = None) -> Any:
    """The sync twin of `record` (runs in the worker's thread pool)."""
    journal_write(journal, "start")
    journal_write(journal, "end")
    return value


@tool
async def rendezvous(journal: str, group: str, expect: int, wait_seconds: float = 20.0) -> int:
    """Wait until `expect` calls of this group are running at the same time (proves overlap)."""
    journal_write(journal, "arrive", group=group)
    deadline = time.monotonic() + wait_seconds
    while True:
        arrived = {  # one key per step, and per tool call of an agent step
            e["key"]
            for e in journal_read(journal)
            if e["event"] == "arrive" and e.get("group") == group
        }
        if len(arrived) >= expect:
            journal_write(journal, "end", group=group)
            return len(arrived)
        if time.monotonic() > deadline:
            raise ToolError(f"only {len(arrived)} of {expect} arrived", non_retryable=True)
        await asyncio.sleep(0.02)


@tool
async def flaky(journal: str, succeed_on: int) -> dict[str, Any]:
    """Fail until attempt `succeed_on`, then return the attempt and the idempotency key."""
    ctx = tool_context()
    journal_write(journal, "attempt")
    if ctx.attempt < succeed_on:
        raise ConnectionError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt, "key": ctx.idempotency_key}


@tool
async def hang_first(journal: str, seconds: float = 60.0) -> str:
    """Attempt 1 hangs for `seconds` (to hit a timeout); later attempts return at once."""
    journal_write(journal, "attempt")
    if tool_context().attempt == 1:
        await asyncio.sleep(seconds)
    return "done"


@tool
async def fail(message: str, error: str = "RuntimeError", non_retryable: bool = False) -> None:
    """Always fail with `message`."""
    if non_retryable:
        raise ToolError(message, non_retryable=True)
    raise type(error, (Exception,), {})(message)


@tool
async def slow_heartbeat(journal: str, block_on_attempt: int = 1, seconds: float = 60.0) -> str:
    """Heartbeat every 0.1 s; on attempt `block_on_attempt` keep going for `seconds`."""
    ctx = tool_context()
    journal_write(journal, "start")
    deadline = time.monotonic() + (seconds if ctx.attempt == block_on_attempt else 0.2)
    while time.monotonic() < deadline:
        ctx.heartbeat({"at": time.time()})
        await asyncio.sleep(0.1)
    journal_write(journal, "end")
    return f"finished on attempt {ctx.attempt}"


@tool
async def count_up(
    journal: str,
    items: int,
    fail_at: int | None = None,
    hold_at: int | None = None,
    hold_while: str | None = None,
    every: float = 0.02,
) -> dict[str, int]:
    """Add up 0..items-1 one item at a time, heartbeating the progress (next item, sum so far)
    after each, and on a retry pick up from the previous attempt's last heartbeat.

    Attempt 1 only: raise on reaching item `fail_at`; or, at item `hold_at`, heartbeat in place
    for as long as the file `hold_while` exists (until the worker or the server is killed).
    """
    ctx = tool_context()
    progress = ctx.last_heartbeat({"next": 0, "sum": 0})
    first, total = int(progress["next"]), int(progress["sum"])
    journal_write(journal, "start", resume_from=first)
    for item in range(first, items):
        if ctx.attempt == 1 and item == fail_at:
            raise ConnectionError(f"lost the connection at item {item}")
        if ctx.attempt == 1 and item == hold_at:
            while hold_while is not None and Path(hold_while).exists():
                ctx.heartbeat({"next": item, "sum": total})
                await asyncio.sleep(0.1)
        total += item
        journal_write(journal, "item", item=item)
        ctx.heartbeat({"next": item + 1, "sum": total})
        await asyncio.sleep(every)
    journal_write(journal, "end", sum=total)
    return {"items": items, "sum": total}
