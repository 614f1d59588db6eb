"""Heartbeats: long tools report progress and resume from it after a retry, model calls
heartbeat while they wait, and heartbeat timeouts are set per step.

A tool that resumes from its heartbeat after its worker was SIGKILLed, and a model call retried
after its worker died mid-call, are in test_crash_recovery.py (they need worker processes).
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from examples.tools import checksum_files
from stepflow.activities.builtin.files import write_file
from stepflow.activities.registry import get_tool
from stepflow.activities.tool_activities import ToolActivities
from stepflow.client.api import StepflowClient
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import (
    DEFAULT_MODEL_HEARTBEAT,
    MODEL_CALL_ACTIVITY,
    PipelineStatus,
    ToolCallInput,
)
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, text, tool_calls
from tests.support.tools import journal_read
from tests.support.waiting import wait_until


async def test_a_tool_that_failed_mid_way_resumes_from_its_last_heartbeat(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step(
            "sum",
            "count_up",
            args={"journal": journal, "items": 20, "fail_at": 12},
            retry={"initial_interval": "100ms"},
        )
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("sum") == {"items": 20, "sum": sum(range(20))}
    assert result.step("sum").attempts == 2
    entries = journal_read(journal)
    runs = [e for e in entries if e["event"] == "start"]
    # Attempt 2 started where attempt 1's last heartbeat said, not from 0 ...
    assert [(e["attempt"], e["resume_from"]) for e in runs] == [(1, 0), (2, 12)]
    assert runs[0]["key"] == runs[1]["key"]
    # ... so no item was done twice, and its sum came along in the details.
    done = [(e["attempt"], e["item"]) for e in entries if e["event"] == "item"]
    assert done == [(1, i) for i in range(12)] + [(2, i) for i in range(12, 20)]


async def test_a_slow_model_call_heartbeats_while_it_waits_and_is_not_timed_out(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
) -> None:
    """The model takes 3 s, three times the call's heartbeat timeout: the call lives on."""
    model_server.play(text("worth the wait", delay=3))
    spec = pipeline(agent("think", model_timeout={"heartbeat": "1s"}))
    run = await stepflow.start_pipeline(spec)
    call = await _pending_model_call(temporal_client, f"{run.workflow_id}/think")
    assert call.attempt == 1

    async def heartbeat_recorded() -> bool:
        pending = await _pending_model_call(temporal_client, f"{run.workflow_id}/think")
        return pending.HasField("last_heartbeat_time")

    await wait_until(heartbeat_recorded, "the model call to heartbeat")
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("think") == "worth the wait"
    assert len(model_server.requests) == 1 and not model_server.unexpected  # never retried


async def test_heartbeat_timeouts_are_set_per_step_over_the_pipeline_default(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    """Two tools that sleep 3 s without heartbeating: only the one with a 1 s timeout is cut."""
    quiet = {"journal": journal, "seconds": 3}
    spec = pipeline(
        step("inherits", "hang_first", args=quiet),
        step("overrides", "hang_first", args=quiet, timeout={"heartbeat": "1m"}),
        defaults={"timeout": {"heartbeat": "1s"}, "retry": {"initial_interval": "100ms"}},
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("inherits").attempts == 2  # timed out after 1 s, then done at once
    assert result.step("overrides").attempts == 1
    attempts = [(e["step"], e["attempt"]) for e in journal_read(journal)]
    assert sorted(attempts) == [("inherits", 1), ("inherits", 2), ("overrides", 1)]


async def test_agent_steps_set_model_and_tool_heartbeat_timeouts_apart(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    """`timeout.heartbeat` applies to both kinds of call; `model_timeout`/`tool_timeout`
    override it for one; model calls get 30 s when nothing is set, tool calls none."""
    for _ in range(3):
        model_server.play(tool_calls(("record", {"journal": journal})), text("done"))
    spec = pipeline(
        agent(
            "apart",
            tools=["record"],
            timeout={"heartbeat": "4s"},
            model_timeout={"heartbeat": "2s"},
            tool_timeout={"heartbeat": "3s"},
        ),
        agent("shared", tools=["record"], timeout={"heartbeat": "4s"}, depends_on=["apart"]),
        agent("unset", tools=["record"], depends_on=["shared"]),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error

    seconds = timedelta(seconds=1)
    expected = {
        "apart": {MODEL_CALL_ACTIVITY: 2 * seconds, "tool_record": 3 * seconds},
        "shared": {MODEL_CALL_ACTIVITY: 4 * seconds, "tool_record": 4 * seconds},
        "unset": {MODEL_CALL_ACTIVITY: DEFAULT_MODEL_HEARTBEAT, "tool_record": None},
    }
    for step_id, timeouts in expected.items():
        scheduled = await _scheduled_heartbeat_timeouts(
            temporal_client, f"{run.workflow_id}/{step_id}"
        )
        assert scheduled == timeouts, step_id


def test_the_example_long_tool_skips_what_its_last_heartbeat_says_is_done(
    settings: Settings,
) -> None:
    """`checksum_files` from examples/tools.py, a sync tool, run as its activity."""
    defn = get_tool(checksum_files.__name__)
    assert defn is not None
    activity_fn = ToolActivities([defn]).activity(defn)
    paths = ["a.txt", "b.txt", "c.txt"]
    for path in paths:
        write_file(path, path * 1000)
    call = ToolCallInput(
        step_id="sums", tool="checksum_files", args={"paths": paths}, idempotency_key="k"
    )
    heartbeats: list[Any] = []
    first = ActivityEnvironment()
    first.on_heartbeat = lambda *details: heartbeats.append(details[0])
    full = first.run(activity_fn, call)
    assert [list(h) for h in heartbeats] == [paths[:1], paths[:2], paths]

    # Attempt 2 after attempt 1 reported a.txt done: a.txt is not read again (it is gone).
    (settings.workspace / "a.txt").unlink()
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2, heartbeat_details=[heartbeats[0]])
    resumed = retry.run(activity_fn, call)
    assert resumed.output == full.output
    assert list(resumed.output) == paths


@pytest.mark.parametrize("field", ["timeout", "model_timeout", "tool_timeout"])
def test_a_heartbeat_timeout_must_be_longer_than_zero(field: str) -> None:
    with pytest.raises(ValueError, match="must be longer than zero"):
        pipeline({**agent("a"), field: {"heartbeat": "0s"}})


def test_a_heartbeat_timeout_is_a_duration() -> None:
    with pytest.raises(ValueError, match="invalid duration 'soon'"):
        pipeline(step("a", "echo", timeout={"heartbeat": "soon"}))


# -- helpers ------------------------------------------------------------------------------------


async def _pending_model_call(client: Client, workflow_id: str) -> Any:
    """The agent step's running model call, as the server describes it."""

    async def described() -> Any:
        try:
            description = await client.get_workflow_handle(workflow_id).describe()
        except Exception:  # the child workflow may not exist yet
            return None
        calls = [
            p
            for p in description.raw_description.pending_activities
            if p.activity_type.name == MODEL_CALL_ACTIVITY
        ]
        return calls[0] if calls else None

    found: list[Any] = []

    async def running() -> bool:
        found[:] = [await described()]
        return found[0] is not None

    await wait_until(running, f"a model call running in {workflow_id}")
    return found[0]


async def _scheduled_heartbeat_timeouts(
    client: Client, workflow_id: str
) -> dict[str, timedelta | None]:
    """Each activity type's heartbeat timeout as scheduled in a workflow's history."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    timeouts: dict[str, timedelta | None] = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            timeout = attributes.heartbeat_timeout.ToTimedelta()
            timeouts[attributes.activity_type.name] = timeout or None
    return timeouts
