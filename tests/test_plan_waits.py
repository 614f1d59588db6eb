"""A plan step waiting for approval waits as an approval step does: other steps take its
concurrency slot meanwhile, and a long run continues as new while it waits, the next run
picking the wait up with the plan already made.

The module runs its own dev server that suggests continuing as new after `SUGGEST_AT`
events, so a short run goes through several runs of one chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineStatus, StepStatus
from stepflow.workflows.scheduler import DagScheduler, Node
from tests.support.control_tools import eventually, history, timers, wait_step
from tests.support.helpers import pipeline, step
from tests.support.model_server import ScriptedModelServer, json_answer
from tests.support.plans import TOPIC, plan_step, planned, ran, recorded
from tests.support.servers import suggesting_continue_as_new_at

SUGGEST_AT = 100
"""History length at which this module's server suggests continuing as new (default: 4,096)."""


@pytest.fixture(scope="module")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """Overrides the session's server for this module: one that suggests continuing early."""
    async with suggesting_continue_as_new_at(SUGGEST_AT) as env:
        yield env


def test_a_step_waiting_for_a_person_frees_its_slot_and_takes_it_back_when_answered() -> None:
    scheduler = DagScheduler([Node("plan"), Node("a"), Node("b")], max_concurrency=1)
    assert scheduler.start_ready() == ["plan"]
    scheduler.wait_for_person("plan")
    assert scheduler.busy == 0 and scheduler.away == {"plan"}
    assert scheduler.start_ready() == ["a"]

    # Answered while `a` holds the only slot: the plan goes on at once (it had the slot
    # first), and nothing new starts until both are done.
    scheduler.answered("plan")
    assert scheduler.busy == 2 and scheduler.away == frozenset()
    scheduler.settle("a", StepStatus.SUCCEEDED)
    assert scheduler.start_ready() == []
    scheduler.settle("plan", StepStatus.SUCCEEDED)
    assert scheduler.start_ready() == ["b"] and scheduler.busy == 1


def test_a_step_that_ends_while_waiting_for_a_person_gives_back_no_slot_twice() -> None:
    scheduler = DagScheduler([Node("plan"), Node("a")], max_concurrency=2)
    assert scheduler.start_ready() == ["plan", "a"]
    scheduler.wait_for_person("plan")
    scheduler.wait_for_person("plan")  # once only
    assert scheduler.busy == 1
    scheduler.settle("plan", StepStatus.CANCELLED)
    assert scheduler.busy == 1 and scheduler.running == {"a"}


def test_a_continued_run_resumes_a_waiting_plan_without_a_slot() -> None:
    scheduler = DagScheduler(
        [Node("plan"), Node("a")], max_concurrency=1, statuses={"plan": StepStatus.WAITING}
    )
    scheduler.resume("plan", away=True)
    assert scheduler.busy == 0 and scheduler.start_ready() == ["a"]
    scheduler.answered("plan")
    assert scheduler.busy == 2


async def test_other_steps_take_the_slot_of_a_plan_waiting_for_approval(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    model_server.play(json_answer(planned(recorded("a", journal, "{{ inputs.request }}"))))
    spec = pipeline(
        plan_step(approve=True),
        recorded("other", journal, "meanwhile"),
        inputs=TOPIC,
        max_concurrency=1,
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)

    # `other` was ready from the start but had no slot until the plan waited for a person.
    state = await wait_step(handle, "other", "SUCCEEDED")
    assert state.step("plan").status is StepStatus.WAITING

    await stepflow.approve(run.workflow_id, "plan", "go")
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("plan") == {"a": "tides"}
    assert ran(journal) == ["other", "a"]


def chain(length: int, journal: str) -> list[dict[str, Any]]:
    """`c0 -> c1 -> ...`, each step journalling its number."""
    return [
        recorded(f"c{i}", journal, i, depends_on=[f"c{i - 1}"] if i else []) for i in range(length)
    ]


async def test_a_long_run_continues_as_new_while_a_plan_waits_for_approval(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    model_server.play(json_answer(planned(recorded("a", journal, "{{ inputs.request }}"))))
    spec = pipeline(
        plan_step(approve={"message": "Run it?", "timeout": "1h"}),
        *chain(30, journal),
        step(
            "after",
            "echo",
            depends_on=["plan", "c29"],
            args={"value": "{{ steps.plan.output.a }} after {{ steps.c29.output }}"},
        ),
        inputs=TOPIC,
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)

    # The chain runs to its end while the plan waits; its history passed the suggestion
    # long before, and the run handed over without waiting for the plan to be decided.
    state = await wait_step(handle, "c29", "SUCCEEDED", timeout=60)
    plan = state.step("plan")
    assert (plan.status, plan.waiting_for, plan.message) == (
        StepStatus.WAITING,
        "approval",
        "Run it?",
    )
    current = await eventually(
        lambda: handle.describe(), lambda d: d.run_id != run.run_id, "a continue-as-new"
    )
    # The approval's timer in the run now is what was left of the hour, not a new hour.
    left = timers(
        await history(temporal_client.get_workflow_handle(run.workflow_id, run_id=current.run_id))
    )
    assert len(left) == 1 and 3000 < left[0].total_seconds() < 3600, left

    await stepflow.approve(run.workflow_id, "plan", "go")
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("after") == "tides after 29"
    assert result.step("plan").comment == "go"
    # The planner was asked once, and each step's tool ran once, across the runs.
    assert len(model_server.requests) == 1
    assert sorted(ran(journal)) == sorted(["a", *(f"c{i}" for i in range(30))])
