"""`StepflowClient.history`: a run's Temporal history as a short, readable timeline."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from temporalio.client import Client

from stepflow.client.api import StepflowClient
from stepflow.client.timeline import TimelineEvent, format_elapsed, format_lines
from stepflow.workflows import control
from stepflow.workflows.control import StepRequest
from tests.support.control_tools import (
    Gate,
    approval,
    gate_step,
    wait_started,
    wait_step,
)
from tests.support.helpers import agent, pipeline, step


def lines_of(timeline: list[TimelineEvent]) -> list[tuple[str, str]]:
    return [(e.subject, e.what) for e in timeline]


def index(timeline: list[TimelineEvent], subject: str, what: str) -> int:
    """Where the line is; fails showing the whole timeline if it is not there."""
    for i, event in enumerate(timeline):
        if event.subject == subject and event.what.startswith(what):
            return i
    raise AssertionError(f"no {subject!r} {what!r} in:\n" + "\n".join(format_lines(timeline)))


async def test_steps_retries_and_agent_steps_in_one_timeline(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    fast = {"initial_interval": "100ms", "max_attempts": 2}
    spec = pipeline(
        step("fetch", "flaky", args={"journal": journal, "succeed_on": 2}, retry=fast),
        agent(
            "summarize",
            "Summarize the input in one sentence; count its words with word_count.",
            input={"text": "the quick brown fox"},
            tools=["word_count"],
            depends_on=["fetch"],
        ),
        step("boom", "fail", args={"message": "it broke"}, retry=fast, on_failure="continue"),
        name="timeline-mix",
    )
    run = await stepflow.start_pipeline(spec)
    await stepflow.get_result(run.workflow_id)
    timeline = await stepflow.history(run.workflow_id)

    assert lines_of(timeline)[0] == ("run", "started (pipeline timeline-mix)")
    assert lines_of(timeline)[-2:] == [("run", "status SUCCEEDED"), ("run", "completed")]
    assert [e.elapsed for e in timeline] == sorted(e.elapsed for e in timeline)
    # A retry: the attempt that succeeded says what the one before it died of.
    retry = index(
        timeline,
        "fetch · tool flaky",
        "retrying: attempt 2 started; attempt 1 failed: ConnectionError: flaky failure on attempt 1",
    )
    assert retry < index(timeline, "fetch · tool flaky", "completed (attempt 2)")
    index(
        timeline,
        "boom · tool fail",
        "failed (attempt 2, retries exhausted): RuntimeError: it broke",
    )
    # The agent step's own events (a child workflow's history) sit inside its start and end.
    child_started = index(timeline, "agent step summarize", "started (timeline-mix-")
    first_call = index(timeline, "summarize · model call 1/10", "completed (attempt 1)")
    tool_call = index(timeline, "summarize · tool word_count", "completed (attempt 1)")
    second_call = index(timeline, "summarize · model call 2/10", "completed (attempt 1)")
    child_done = index(timeline, "agent step summarize", "completed")
    assert child_started < first_call < tool_call < second_call < child_done
    # Bookkeeping stays out: progress signals, the SDK's own search attributes.
    assert not [e for e in timeline if "step_progress" in e.subject or "Temporal" in e.subject]


async def test_timers_signals_and_a_cancelled_run(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    spec = pipeline(
        approval("deploy", timeout="1h"),
        approval("auto", timeout="100ms", on_timeout="approve"),
        gate_step("ship", Gate(journal, tmp_path, "ship"), depends_on=["deploy", "auto"]),
        name="timeline-cancel",
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "auto", "SUCCEEDED")
    await wait_step(handle, "deploy", "WAITING")
    await handle.signal(control.APPROVE, StepRequest(step="deploy", comment="go"))
    await wait_started(journal, "ship")
    await stepflow.cancel(run.workflow_id)
    await stepflow.wait_closed(run.workflow_id)

    timeline = await stepflow.history(run.workflow_id)
    started = index(timeline, "deploy · approval timeout", "timer started (1h)")
    signal = index(timeline, "deploy · signal approve", "received (comment=go)")
    assert started < signal < index(timeline, "deploy · approval timeout", "timer cancelled")
    assert index(timeline, "auto · approval timeout", "timer started (100ms)") < index(
        timeline, "auto · approval timeout", "timer fired"
    )
    cancel = index(timeline, "run", "cancel requested")
    assert cancel < index(timeline, "ship · tool control_gate", "cancel")
    assert timeline[-1].subject == "run" and timeline[-1].what == "cancelled"


def test_elapsed_times_are_short_and_readable() -> None:
    assert [format_elapsed(timedelta(seconds=s)) for s in (0, 0.414, 9.5, 12.34, 125, 3725)] == [
        "0.00s",
        "0.41s",
        "9.50s",
        "12.3s",
        "2m05s",
        "1h02m",
    ]
