"""A test tool and helpers for the run-control tests (status, updates, signals, cancel, UI).

`control_gate` holds a step open until the test releases it: it heartbeats all
the while (so a cancel reaches it), journals `start`, `end` or `cancelled`,
and can fail its first attempts to put the step into RETRYING. Workers load it
through STEPFLOW_TOOL_MODULES (the tests' `settings` fixture adds this module).

The helpers drive a run through the Temporal client itself: the `status`
query, updates that must be rejected, and the run's history.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError

from stepflow.activities import tool, tool_context
from stepflow.workflows.control import STATUS_QUERY, PipelineState
from tests.support.tools import journal_read, journal_write

CONTROL_TOOL_MODULES = "tests.support.tools,tests.support.control_tools"
"""STEPFLOW_TOOL_MODULES for the control tests' workers."""

HEARTBEAT = {"heartbeat": "2s"}
"""A step's `timeout` for `control_gate`: Temporal tells a tool of a cancel on its next
heartbeat, which the SDK sends at most every 0.8 x the heartbeat timeout."""

FAST_RETRY = {"initial_interval": "100ms", "max_attempts": 5}

T = TypeVar("T")


@tool
async def control_gate(
    journal: str, release: str, value: Any = None, fail_attempts: int = 0
) -> Any:
    """Fail attempts up to `fail_attempts`; then heartbeat until the file `release` exists."""
    ctx = tool_context()
    journal_write(journal, "start")
    if ctx.attempt <= fail_attempts:
        journal_write(journal, "fail")
        raise ConnectionError(f"planned failure on attempt {ctx.attempt}")
    try:
        while not Path(release).exists():
            ctx.heartbeat({"waiting": release})
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        journal_write(journal, "cancelled")
        raise
    journal_write(journal, "end")
    return value


class Gate:
    """One `control_gate`'s release file and the arguments of a step that waits on it."""

    def __init__(self, journal: str, directory: Path, name: str) -> None:
        self.journal = journal
        self.name = name
        self.path = directory / f"gate-{name}"

    def args(self, value: Any = None, fail_attempts: int = 0) -> dict[str, Any]:
        return {
            "journal": self.journal,
            "release": str(self.path),
            "value": value,
            "fail_attempts": fail_attempts,
        }

    def open(self) -> None:
        self.path.touch()


def gate_step(step_id: str, gate: Gate, value: Any = None, **fields: Any) -> dict[str, Any]:
    """A tool step that waits on `gate` (heartbeating, fast retries unless `retry=` is given)."""
    fields.setdefault("timeout", HEARTBEAT)
    fields.setdefault("retry", FAST_RETRY)
    fail_attempts = fields.pop("fail_attempts", 0)
    return {
        "id": step_id,
        "kind": "tool",
        "tool": "control_gate",
        "args": gate.args(value, fail_attempts),
        **fields,
    }


def approval(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "kind": "approval", **fields}


def human_input(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "kind": "input", **fields}


# --- waiting without sleeping as an assertion ---------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    what: str,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> T:
    """Call `probe` until `ok(result)`; fail naming `what` and the last result at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last = await probe()
        if ok(last):
            return last
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}; last seen: {last!r}")
        await asyncio.sleep(interval)


async def status(handle: WorkflowHandle[Any, Any]) -> PipelineState:
    return await handle.query(STATUS_QUERY, result_type=PipelineState)


async def wait_state(
    handle: WorkflowHandle[Any, Any],
    ok: Callable[[PipelineState], bool],
    what: str,
    timeout: float = 20.0,
) -> PipelineState:
    """Query `status` until `ok(state)`; fail at once if the run closes without getting there."""

    async def probe() -> PipelineState | str:
        try:
            state = await status(handle)
        except Exception as err:  # not started yet, or no worker picked it up yet
            return f"query failed: {err!r}"
        if not ok(state):
            closed = await closed_reason(handle)
            assert closed is None, f"waiting for {what}: {closed}; its state: {state!r}"
        return state

    state = await eventually(
        probe, lambda s: isinstance(s, PipelineState) and ok(s), what, timeout=timeout
    )
    assert isinstance(state, PipelineState)
    return state


async def closed_reason(handle: WorkflowHandle[Any, Any]) -> str | None:
    """None while the run is open; else how it closed (with the failure's message)."""
    closed = (await handle.describe()).status
    if closed in (None, WorkflowExecutionStatus.RUNNING):
        return None
    last = (await history(handle))[-1]
    message = ""
    if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
        message = ": " + last.workflow_execution_failed_event_attributes.failure.message
    return f"the run closed {closed.name}{message}"


async def wait_step(
    handle: WorkflowHandle[Any, Any], step_id: str, *statuses: str, timeout: float = 20.0
) -> PipelineState:
    """Query `status` until step `step_id` is in one of `statuses` (StepStatus values)."""
    return await wait_state(
        handle,
        lambda s: s.step(step_id).status.value in statuses,
        f"step {step_id!r} in {statuses}",
        timeout=timeout,
    )


async def wait_journal(
    journal: str,
    ok: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = 20.0,
    handle: WorkflowHandle[Any, Any] | None = None,
) -> list[dict[str, Any]]:
    """Read the journal until `ok(entries)`; with `handle`, fail at once if the run closes."""

    async def probe() -> list[dict[str, Any]]:
        entries = journal_read(journal)
        if handle is not None and not ok(entries):
            closed = await closed_reason(handle)
            assert closed is None, f"waiting for {what}: {closed}"
        return entries

    return await eventually(probe, ok, what, timeout=timeout)


def events_of(entries: Sequence[dict[str, Any]], step: str, event: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["step"] == step and e["event"] == event]


async def wait_started(
    journal: str, *steps: str, handle: WorkflowHandle[Any, Any] | None = None
) -> None:
    """Until each of `steps` has a `control_gate` attempt waiting (not one that failed).

    With `handle`, a run that closes first fails the wait at once, saying why.
    """

    def ok(entries: list[dict[str, Any]]) -> bool:
        return all(
            len(events_of(entries, s, "start")) > len(events_of(entries, s, "fail")) for s in steps
        )

    await wait_journal(journal, ok, f"{steps} started", handle=handle)


async def wait_cancelled(journal: str, *steps: str) -> None:
    """Until the `control_gate` of each of `steps` has noticed its cancellation."""
    await wait_journal(
        journal,
        lambda entries: all(events_of(entries, s, "cancelled") for s in steps),
        f"the tools of {steps} cancelled",
    )


# --- updates that must be rejected --------------------------------------------------------------


async def rejection(update: Awaitable[Any]) -> str:
    """The message of an update's rejection; fails the test if the update was accepted."""
    try:
        result = await update
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        assert isinstance(cause, ApplicationError), f"cause is {cause!r}, not an ApplicationError"
        assert cause.message, "a rejection without a message"
        return cause.message
    raise AssertionError(f"the update was accepted (result {result!r}); expected a rejection")


def assert_mentions(message: str, *patterns: str) -> None:
    """Each pattern (a regular expression, case-insensitive) is found in the message."""
    for pattern in patterns:
        assert re.search(pattern, message, re.IGNORECASE), f"{pattern!r} not in {message!r}"


def one_line(result: Any) -> str:
    """An accepted update's result: one line of text saying what happened."""
    assert isinstance(result, str) and result.strip(), f"update result {result!r}"
    assert "\n" not in result.strip(), f"update result is not one line: {result!r}"
    return result


# --- history -----------------------------------------------------------------------------------


async def history(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return list((await handle.fetch_history()).events)


def of_type(events: Sequence[HistoryEvent], event_type: int) -> list[HistoryEvent]:
    return [e for e in events if e.event_type == event_type]


def accepted_update_ids(events: Sequence[HistoryEvent]) -> list[str]:
    accepted = of_type(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
    return [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        for e in accepted
    ]


def timers(events: Sequence[HistoryEvent]) -> list[timedelta]:
    """The durations of the timers the run started."""
    return [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for e in of_type(events, EventType.EVENT_TYPE_TIMER_STARTED)
    ]


def scheduled_activity_steps(events: Sequence[HistoryEvent]) -> list[str]:
    """The `step_id` of every activity the run scheduled (from its input), in order."""
    steps = []
    for e in of_type(events, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED):
        payloads = e.activity_task_scheduled_event_attributes.input.payloads
        steps.append(json.loads(payloads[0].data)["step_id"])
    return steps


def summaries(client: Client, events: Sequence[HistoryEvent]) -> list[str]:
    """The user-metadata summary of every scheduled activity, in order."""
    converter = client.data_converter.payload_converter
    found = []
    for e in of_type(events, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED):
        if e.HasField("user_metadata") and e.user_metadata.HasField("summary"):
            found.append(converter.from_payload(e.user_metadata.summary, str))
        else:
            found.append("")
    return found


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    """What the workflow set with `workflow.set_current_details` (what the Web UI shows)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details
