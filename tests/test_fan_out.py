"""Fan-out past what one workflow may hold pending: Temporal allows 2,000 activities (and
2,000 child workflows) pending per workflow, and refuses the workflow task that asks for more.

A pipeline never has more than `max_concurrency` (at most 1,000) activities and agent
steps running; an agent step never more than `MAX_PARALLEL_TOOL_CALLS` tool calls. These
tests count, in the histories, how many were ever pending at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from stepflow.client.api import StepflowClient
from stepflow.workflows.agent import MAX_PARALLEL_TOOL_CALLS
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, text, tool_calls

STEPS = 2_500


def most_pending_activities(events: Sequence[HistoryEvent]) -> int:
    """The most activities a run had scheduled and not yet closed, at any point."""
    closed = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
    }
    pending = most = 0
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            pending += 1
            most = max(most, pending)
        elif event.event_type in closed:
            pending -= 1
    return most


async def run_histories(client: Client, workflow_id: str) -> list[list[HistoryEvent]]:
    """The history of each run of a workflow's chain, first to latest."""
    latest = (await client.get_workflow_handle(workflow_id).fetch_history()).events[0]
    run_id = latest.workflow_execution_started_event_attributes.first_execution_run_id
    histories = []
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = list((await handle.fetch_history()).events)
        histories.append(events)
        last = events[-1]
        if last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return histories
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id


async def test_a_pipeline_of_2500_independent_steps_runs_at_most_1000_at_once(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        *[step(f"s{i}", "echo", args={"value": i}) for i in range(STEPS)],
        step("total", "echo", depends_on=["s0", f"s{STEPS - 1}"], args={"value": "done"}),
        max_concurrency=1000,
    )
    started = time.monotonic()
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    elapsed = time.monotonic() - started

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert [result.output(f"s{i}") for i in (0, 1, STEPS - 1)] == [0, 1, STEPS - 1]
    assert result.output("total") == "done"
    assert all(r.status is StepStatus.SUCCEEDED and r.attempts == 1 for r in result.steps)
    histories = await run_histories(temporal_client, run.workflow_id)
    pending = [most_pending_activities(events) for events in histories]
    assert max(pending) == 1000, pending
    scheduled = sum(
        1
        for events in histories
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )
    assert scheduled == STEPS + 1  # each step once, whichever run of the chain it ran in
    events = sum(len(h) for h in histories)
    print(
        f"\n{STEPS + 1} steps in {elapsed:.1f} s: {len(histories)} run(s), {events} events, "
        f"at most {max(pending)} activities pending"
    )


async def test_an_agent_reply_with_more_tool_calls_than_may_run_at_once(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
) -> None:
    calls = MAX_PARALLEL_TOOL_CALLS + 100
    model_server.play(
        tool_calls(*[("echo", {"value": n}) for n in range(calls)]),
        text("all echoed"),
    )
    run = await stepflow.start_pipeline(pipeline(agent("wide", tools=["echo"])))
    result = await stepflow.get_result(run.workflow_id)

    wide = result.step("wide")
    assert wide.status is StepStatus.SUCCEEDED, wide.error
    assert wide.tool_calls == calls
    # Every result went back to the model, in the order of the calls.
    answers = [m for m in model_server.requests[1].messages if m["role"] == "tool"]
    assert [m["content"] for m in answers] == [str(n) for n in range(calls)]
    histories = await run_histories(temporal_client, f"{run.workflow_id}/wide")
    assert max(most_pending_activities(h) for h in histories) == MAX_PARALLEL_TOOL_CALLS
