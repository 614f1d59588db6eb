"""How a run describes itself (the Web UI's current details) and how control requests are judged.

Pure functions, tested directly; `test_run_control.py` and friends drive the same
code through a real server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError

from stepflow.workflows import requests
from stepflow.workflows.control import RunStatus
from stepflow.workflows.models import PipelineSpec, StepRecord, StepStatus
from stepflow.workflows.run_state import RunState
from stepflow.workflows.run_view import details_markdown, live_status, step_state

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def record(step_id: str, status: StepStatus, **fields: object) -> StepRecord:
    return StepRecord.model_validate({"id": step_id, "kind": "tool", "status": status, **fields})


def test_status_words_say_what_qualifies_them() -> None:
    assert step_state(record("a", StepStatus.RETRYING, attempts=3)) == "RETRYING (attempt 3)"
    assert step_state(record("b", StepStatus.WAITING, waiting_for="approval")) == (
        "WAITING for approval"
    )
    running = record("c", StepStatus.RUNNING, model_call=3, max_model_calls=10)
    assert step_state(running) == "RUNNING (model call 3/10)"


def test_a_paused_run_is_paused_and_a_waiting_step_makes_it_waiting() -> None:
    state = RunState(
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        records=[record("a", StepStatus.WAITING), record("b", StepStatus.RUNNING)],
    )
    waiting = state.count(StepStatus.WAITING)
    assert live_status(waiting, paused=False) is RunStatus.WAITING
    assert live_status(waiting, paused=True) is RunStatus.PAUSED
    state.set_status(state.record("a"), StepStatus.SUCCEEDED)
    assert live_status(state.count(StepStatus.WAITING), paused=False) is RunStatus.RUNNING


def test_the_run_state_counts_statuses_as_they_change_and_lists_the_busy_steps() -> None:
    records = [record(f"s{i}", StepStatus.PENDING) for i in range(10_000)]
    state = RunState(started_at=datetime(2026, 1, 1, tzinfo=UTC), records=records)
    seen: list[str] = []
    state.on_status(lambda r: seen.append(f"{r.id}:{r.status.value}"))
    state.set_status(state.record("s9000"), StepStatus.RUNNING)
    state.set_status(state.record("s5"), StepStatus.FAILED)
    state.set_status(state.record("s1"), StepStatus.SUCCEEDED)
    state.set_status(state.record("s1"), StepStatus.SUCCEEDED)  # no change: not told again

    assert state.counts == {
        StepStatus.PENDING: 9_997,
        StepStatus.RUNNING: 1,
        StepStatus.FAILED: 1,
        StepStatus.SUCCEEDED: 1,
    }
    assert [r.id for r in state.active()] == ["s5", "s9000"]  # spec order
    assert seen == ["s9000:RUNNING", "s5:FAILED", "s1:SUCCEEDED"]
    details = details_markdown(
        "big",
        RunStatus.RUNNING,
        state.records,
        datetime(2026, 1, 1, tzinfo=UTC),
        tally=state.counts,
        active=state.active,
    )
    assert "10000 steps: 9997 pending, 1 running, 1 failed, 1 succeeded" in details
    assert "| s5 |" in details and "| s9000 |" in details and "| s1 |" not in details


def test_details_are_a_markdown_table_with_elapsed_times() -> None:
    records = [
        record(
            "plan",
            StepStatus.SUCCEEDED,
            attempts=1,
            started_at=T0,
            ended_at=T0 + timedelta(seconds=2),
        ),
        record("write", StepStatus.RETRYING, attempts=2, started_at=T0 + timedelta(seconds=2)),
        record("ship", StepStatus.PENDING),
    ]
    text = details_markdown("demo", RunStatus.RUNNING, records, T0 + timedelta(seconds=5))
    assert text.splitlines()[:4] == [
        "**demo** · RUNNING",
        "",
        "| step | status | attempts | time |",
        "|---|---|---|---|",
    ]
    assert "| plan | SUCCEEDED | 1 | 2.0s |" in text
    assert "| write | RETRYING (attempt 2) | 2 | 3.0s |" in text
    assert "| ship | PENDING |  |  |" in text


def test_details_of_a_big_pipeline_list_only_the_steps_worth_a_look() -> None:
    records = [record(f"s{i}", StepStatus.SUCCEEDED) for i in range(100)]
    records[7] = record("s7", StepStatus.FAILED)
    text = details_markdown("big", RunStatus.RUNNING, records, T0)
    assert "100 steps: 99 succeeded, 1 failed" in text.splitlines()[0]
    assert len(text.splitlines()) == 5 and "| s7 | FAILED |" in text


SPEC = PipelineSpec.model_validate(
    {
        "name": "gates",
        "steps": [
            {"id": "build", "kind": "tool", "tool": "echo"},
            {"id": "gate", "kind": "approval"},
            {"id": "budget", "kind": "input", "schema": {"type": "integer", "minimum": 1}},
        ],
    }
)
STEPS = {s.id: s for s in SPEC.steps}


def rejected(check: object, *args: object) -> str:
    with pytest.raises(ApplicationError) as caught:
        check(*args)  # type: ignore[operator]
    assert caught.value.type == requests.REQUEST_REJECTED
    return caught.value.message


def test_requests_that_make_no_sense_are_rejected_with_a_clear_message() -> None:
    records = {
        "build": record("build", StepStatus.SUCCEEDED),
        "gate": record("gate", StepStatus.PENDING),
        "budget": record("budget", StepStatus.WAITING),
    }
    assert rejected(requests.check_decision, STEPS, records, "gaet") == (
        "the pipeline has no step 'gaet' (did you mean 'gate'?)"
    )
    assert rejected(requests.check_decision, STEPS, records, "build") == (
        "step 'build' is a tool step, not an approval step"
    )
    assert rejected(requests.check_decision, STEPS, records, "gate") == (
        "step 'gate' is not waiting for approval (it is PENDING)"
    )
    assert rejected(requests.check_input, STEPS, records, "budget", "many") == (
        "the value for step 'budget' does not match its schema: 'many' is not of type 'integer'"
    )
    assert "less than the minimum of 1" in rejected(
        requests.check_input, STEPS, records, "budget", 0
    )
    assert rejected(requests.check_cancel_step, records, "build") == (
        "step 'build' has already ended (SUCCEEDED)"
    )
    assert rejected(requests.check_pause, True, False) == "the run is already paused"
    assert rejected(requests.check_pause, False, True) == "the run has already ended"
    assert rejected(requests.check_resume, False) == "the run is not paused"
    requests.check_input(STEPS, records, "budget", 3)  # accepted: no exception
    requests.check_cancel_step(records, "gate")
