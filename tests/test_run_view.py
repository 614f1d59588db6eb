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
    waiting = [record("a", StepStatus.WAITING), record("b", StepStatus.RUNNING)]
    assert live_status(waiting, paused=False) is RunStatus.WAITING
    assert live_status(waiting, paused=True) is RunStatus.PAUSED
    assert live_status([record("b", StepStatus.RUNNING)], paused=False) is RunStatus.RUNNING


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
