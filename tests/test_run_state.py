"""`RunState`: one model for what a run remembers and what continue-as-new carries. No server."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

from stepflow.workflows.models import PipelineCarry, PipelineInput, StepStatus
from stepflow.workflows.run_state import RunState

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STEPS = [("a", "tool"), ("b", "agent"), ("ask", "approval")]


def test_a_fresh_run_has_a_pending_record_per_step_in_spec_order() -> None:
    state = RunState.begin(STEPS, None, NOW)
    assert [(r.id, r.status) for r in state.records] == [
        ("a", StepStatus.PENDING),
        ("b", StepStatus.PENDING),
        ("ask", StepStatus.PENDING),
    ]
    assert state.started_at == NOW and state.runs == 0


def test_the_hand_over_carries_every_field_and_drops_pending_records() -> None:
    state = RunState.begin(STEPS, None, NOW)
    state.succeed(state.record("a"), {"n": 1})
    state.record("ask").status = StepStatus.WAITING
    state.paused = True
    state.cancel_requests["b"] = "not needed"
    state.answers["ask"] = ("approve", "fine")
    state.transcripts.append({"role": "user", "content": "hi"})

    carried = json.loads(state.handover().model_dump_json())
    assert carried["records"] == [
        {"id": "a", "kind": "tool", "status": "SUCCEEDED", "output": {"n": 1}},
        {"id": "ask", "kind": "approval", "status": "WAITING"},
    ]
    assert carried["runs"] == 1 and carried["paused"] is True
    assert carried["answers"] == {"ask": ["approve", "fine"]}

    later = RunState.begin(STEPS, RunState.model_validate(carried), datetime.now(UTC))
    assert later.started_at == NOW  # the chain's start
    assert later.record("b").status is StepStatus.PENDING  # made afresh
    assert later.outputs() == {"a": {"n": 1}}
    assert (later.paused, later.cancel_requests, later.runs) == (True, {"b": "not needed"}, 1)
    assert later.answers == {"ask": ("approve", "fine")}
    # Nothing a run remembers is left behind: every field is carried.
    assert set(carried) == set(RunState.model_fields)


def test_outputs_come_in_the_order_steps_succeeded() -> None:
    state = RunState.begin(STEPS, None, NOW)
    state.succeed(state.record("b"), "second in the spec, first to succeed")
    state.succeed(state.record("a"), "first in the spec")
    assert list(state.outputs()) == ["b", "a"]
    assert state.outputs(["a"]) == {"a": "first in the spec"}


def test_what_runs_carried_before_run_state_still_parses() -> None:
    """The input of a continued run recorded in a committed history: the old `PipelineCarry`."""
    saved = json.loads(Path("tests/histories/continue-as-new.run2.json").read_text())
    start = saved["history"]["events"][0]["workflowExecutionStartedEventAttributes"]
    payload = start["input"]["payloads"][0]
    data = json.loads(base64.b64decode(payload["data"]))
    parsed = PipelineInput.model_validate(data)
    assert isinstance(parsed.carried, RunState) and PipelineCarry is RunState
    assert parsed.carried.records
