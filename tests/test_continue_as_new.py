"""Long runs: pipelines and agent loops continue as new when the server suggests it.

The module runs its own dev server whose suggestion comes after
`SUGGEST_AT` events instead of thousands, so a short test goes through many
runs of one chain. Nobody outside should notice: the result, the `status`
query, updates and signals, and the tools' idempotency keys are those of one
long run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.workflows.control import PIPELINE_ATTRIBUTE, STATUS_ATTRIBUTE, RunStatus
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.control_tools import (
    Gate,
    accepted_update_ids,
    approval,
    eventually,
    gate_step,
    history,
    status,
    timers,
    wait_started,
    wait_state,
    wait_step,
)
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, hang, text, tool_calls
from tests.support.servers import suggesting_continue_as_new_at
from tests.support.tools import journal_read

SUGGEST_AT = 100
"""History length at which this module's server suggests continuing as new (default: 4,096)."""


@pytest.fixture(scope="module")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """Overrides the session's server for this module: one that suggests continuing early."""
    async with suggesting_continue_as_new_at(SUGGEST_AT) as env:
        yield env


async def run_chain(client: Client, workflow_id: str) -> list[str]:
    """The run ids of a workflow's chain, first to latest, followed through its histories."""
    latest = (await client.get_workflow_handle(workflow_id).fetch_history()).events[0]
    runs = [latest.workflow_execution_started_event_attributes.first_execution_run_id]
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=runs[-1])
        last = (await handle.fetch_history()).events[-1]
        if last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return runs
        runs.append(last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id)


async def wait_continued(handle: WorkflowHandle[Any, Any], first_run_id: str) -> str:
    """Until the run has continued as new at least once; returns the run now current."""

    async def current() -> str:
        return (await handle.describe()).run_id or ""

    return await eventually(current, lambda run: run != first_run_id, "a continue-as-new")


def starts_by_step(journal: str) -> dict[str, int]:
    counted: dict[str, int] = {}
    for entry in journal_read(journal):
        if entry["event"] == "start":
            counted[entry["step"]] = counted.get(entry["step"], 0) + 1
    return counted


def chain(length: int, journal: str) -> list[dict[str, Any]]:
    """`c0 -> c1 -> ...`: each step's output names its own number and its predecessor's."""
    steps = []
    for i in range(length):
        value: dict[str, Any] = {"i": i}
        depends_on = []
        if i:
            value["prev"] = f"{{{{ steps.c{i - 1}.output.i }}}}"
            depends_on = [f"c{i - 1}"]
        args = {"journal": journal, "value": value}
        steps.append(step(f"c{i}", "record", args=args, depends_on=depends_on))
    return steps


async def test_a_pipeline_far_past_the_limit_continues_as_new_invisibly(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    length = 80  # some 6 events a step: about 5 times SUGGEST_AT
    gate = Gate(journal, tmp_path, "hold")
    spec = pipeline(
        *chain(length, journal),
        *[step(f"side{i}", "record", args={"journal": journal, "value": i}) for i in range(5)],
        step(
            "join",
            "record",
            depends_on=["c0", f"c{length - 1}", "side4"],
            args={
                "journal": journal,
                "value": {
                    "first": "{{ steps.c0.output }}",
                    "last": f"{{{{ steps.c{length - 1}.output.i }}}}",
                    "side": "{{ steps.side4.output }}",
                },
            },
        ),
        gate_step("hold", gate, value="released", depends_on=["join"]),
        max_concurrency=3,
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    started = (await wait_state(handle, lambda s: True, "a first answer")).started_at

    # Mid-run, several runs later: the query answers with the records of the runs before.
    await wait_started(journal, "hold", handle=handle)
    runs = await run_chain(temporal_client, run.workflow_id)
    assert len(runs) >= 3, runs
    assert runs[0] == run.run_id
    state = await status(handle)
    assert state.status is RunStatus.RUNNING
    assert state.started_at == started
    assert state.step("c0").status is StepStatus.SUCCEEDED
    assert state.step("c0").output == {"i": 0}
    assert state.step("join").output == {"first": {"i": 0}, "last": length - 1, "side": 4}
    assert state.step("hold").status is StepStatus.RUNNING
    assert state.counts[StepStatus.SUCCEEDED] == length + 6

    gate.open()
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    assert result.started_at == started
    assert [result.output(f"c{i}") for i in range(3)] == [
        {"i": 0},
        {"i": 1, "prev": 0},
        {"i": 2, "prev": 1},
    ]
    assert result.output("hold") == "released"
    # Every step ran once, and its tool saw the key of the first run, whichever run it was in.
    assert set(starts_by_step(journal).values()) == {1}
    assert len(starts_by_step(journal)) == length + 7
    keys = {e["key"] for e in journal_read(journal)}
    assert all(key.startswith(f"{run.workflow_id}/{run.run_id}/") for key in keys), keys
    # The chain's last run kept the memo and the search attributes, and ended them right.
    runs = await run_chain(temporal_client, run.workflow_id)
    assert len(runs) >= 4, runs
    described = await temporal_client.get_workflow_handle(run.workflow_id).describe()
    assert described.run_id == runs[-1]
    assert (await described.memo())["pipeline"] == "test"
    assert described.typed_search_attributes.get(PIPELINE_ATTRIBUTE) == "test"
    assert described.typed_search_attributes.get(STATUS_ATTRIBUTE) == RunStatus.SUCCEEDED.value
    # `stepflow history` reads the whole chain; `stepflow list` shows the pipeline run once.
    timeline = await stepflow.history(run.workflow_id)
    lines = [(e.subject, e.what) for e in timeline]
    assert lines[0] == ("run", "started (pipeline test)")
    assert lines.count(("run", "continued as new (its history had grown long)")) == len(runs) - 1
    assert lines[-1] == ("run", "completed")
    assert [e.elapsed for e in timeline] == sorted(e.elapsed for e in timeline)
    for i in (0, length - 1):
        assert (
            sum(
                1
                for subject, what in lines
                if subject == f"c{i} · tool record" and what.startswith("completed")
            )
            == 1
        )
    listed = await eventually(
        lambda: stepflow.list_runs(pipeline="test", limit=100),
        # Visibility lags: until each run of the chain is recorded closed, wait.
        lambda found: [r.workflow_id for r in found].count(run.workflow_id) == 1,
        "the run listed once",
    )
    summary = next(r for r in listed if r.workflow_id == run.workflow_id)
    assert summary.status == "SUCCEEDED"
    # Listed and described, the run started when its chain did (the client's clock, as it
    # started it), not when its last run did.
    first = await temporal_client.get_workflow_handle(run.workflow_id, run_id=runs[0]).describe()
    assert summary.start_time and first.start_time and first.close_time
    assert abs(summary.start_time - first.start_time) < timedelta(seconds=1)
    assert summary.start_time < first.close_time <= described.start_time
    assert (await stepflow.describe(run.workflow_id)).start_time == summary.start_time


@pytest.mark.parametrize("store", ["local", "off"])
async def test_a_state_over_2_mb_is_handed_over_only_with_the_payload_store(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    journal: str,
    store: str,
) -> None:
    """A 2.5 MB output makes the next run's input too big for Temporal, unless stored outside.

    With the store on, the client says so in the input and the run continues as new as
    usual. Without it, the run does not hand over (that task would fail for ever): it goes
    on in one history and still completes.
    """
    size = 2_500_000
    spec = pipeline(
        step("big", "big_text", args={"journal": journal, "size": size}),
        *chain(30, journal),  # some 180 events: past SUGGEST_AT
        step("size", "measure", args={"text": "{{ steps.big.output }}"}, depends_on=["big"]),
    )
    stepflow.settings = stepflow.settings.model_copy(update={"payload_store": store})
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("size")["length"] == size
    runs = await run_chain(temporal_client, run.workflow_id)
    if store == "local":
        assert len(runs) >= 2, runs
    else:
        assert runs == [run.run_id]
    assert set(starts_by_step(journal).values()) == {1}


async def test_waiting_steps_and_a_pause_are_carried_into_the_next_run(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "slow")
    spec = pipeline(
        approval("ask", message="ship {{ inputs.what }}?", timeout="1h"),
        gate_step("slow", gate, value="slow done"),
        *chain(30, journal),
        step(
            "after",
            "echo",
            depends_on=["ask", "slow", "c29"],
            args={"value": "{{ steps.ask.output.comment }} / {{ steps.slow.output }}"},
        ),
        inputs={"what": {"type": "string", "default": "it"}},
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "slow", handle=handle)

    # Past the suggestion the run starts no more steps: `slow` holds it, so it cannot hand
    # over yet. A pause now lands in this first run.
    async def length() -> int:
        return (await handle.describe()).history_length

    await eventually(length, lambda n: n >= SUGGEST_AT, "the history at the suggestion")
    assert "paused" in await stepflow.pause(run.workflow_id)
    await wait_state(
        handle,
        lambda s: (
            s.status is RunStatus.PAUSED
            and not any(r.status is StepStatus.RUNNING for r in s.steps if r.id != "slow")
        ),
        "paused with only `slow` running",
    )
    assert (await handle.describe()).run_id == run.run_id
    gate.open()

    # `slow` ends; the next run takes over, still paused, `ask` still waiting.
    current = await wait_continued(handle, run.run_id)
    state = await wait_step(handle, "slow", "SUCCEEDED")
    assert state.status is RunStatus.PAUSED
    ask = state.step("ask")
    assert (ask.status, ask.waiting_for, ask.message) == (
        StepStatus.WAITING,
        "approval",
        "ship it?",
    )
    pending = [r.id for r in state.steps if r.status is StepStatus.PENDING]
    assert "after" in pending and "c29" in pending
    # The approval's timer in the new run is what was left of the hour, not a new hour.
    left = timers(
        await history(temporal_client.get_workflow_handle(run.workflow_id, run_id=current))
    )
    assert len(left) == 1 and 3000 < left[0].total_seconds() < 3600, left

    assert await stepflow.resume(run.workflow_id) == "resumed"
    await stepflow.approve(run.workflow_id, "ask", "go")
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("after") == "go / slow done"
    assert result.step("ask").output == {"approved": True, "comment": "go", "by": "user"}
    assert result.output("c29") == {"i": 29, "prev": 28}
    assert set(starts_by_step(journal).values()) == {1}
    assert len(await run_chain(temporal_client, run.workflow_id)) >= 2


async def test_an_agent_loop_of_30_model_calls_continues_as_new_between_calls(
    model_server: ScriptedModelServer,
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    journal: str,
) -> None:
    calls = 30
    model_server.play(
        *[
            tool_calls(("record", {"journal": journal, "value": n}), usage=(10, 1))
            for n in range(1, calls)
        ],
        text("counted to 29", usage=(10, 1)),
        text("read it all"),
    )
    spec = pipeline(
        agent("count", tools=["record"], input="count", max_model_calls=calls),
        agent("read", depends_on=["count"], input="read"),
        context="full",
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    count = result.step("count")
    assert count.status is StepStatus.SUCCEEDED, count.error
    assert count.output == "counted to 29"
    assert count.tool_calls == calls - 1
    assert count.usage is not None and count.usage.model_calls == calls
    assert count.usage.prompt_tokens == 10 * calls
    # The progress reports of the chain's last run reached the pipeline too.
    assert count.model_call == calls
    child_runs = await run_chain(temporal_client, f"{run.workflow_id}/count")
    assert len(child_runs) >= 3, child_runs

    requests = model_server.requests
    assert len(requests) == calls + 1 and not model_server.unexpected
    # Each call carried the whole conversation: system, user, then a call and its result each.
    last = requests[calls - 1].messages
    assert len(last) == 2 + 2 * (calls - 1)
    assert [m["content"] for m in last[3::2]] == [str(n) for n in range(1, calls)]
    # `context: full`: the next step saw the conversation from its user turn on, once.
    read = requests[calls].messages
    assert [m["role"] for m in read[:2]] == ["system", "user"]
    assert read[1]["content"] == "Input:\ncount" and read[-2]["content"] == "counted to 29"
    assert len(read) == 1 + 2 * calls + 1  # its system turn, the conversation, its user turn
    # Each tool call ran once, under a key of its own that starts with the pipeline's first run.
    keys = [e["key"] for e in journal_read(journal) if e["event"] == "start"]
    assert len(keys) == len(set(keys)) == calls - 1
    assert all(k.startswith(f"{run.workflow_id}/{run.run_id}/count/call-") for k in keys)


async def test_cancelling_an_agent_step_reaches_its_continued_run(
    worker: None,
    model_server: ScriptedModelServer,  # stops first: the hanging call ends with the test
    stepflow: StepflowClient,
    temporal_client: Client,
    journal: str,
) -> None:
    model_server.play(
        *[tool_calls(("record", {"journal": journal, "value": n})) for n in range(12)],
        hang(60),
    )
    spec = pipeline(
        agent("loop", tools=["record"], max_model_calls=50, on_failure="continue"),
        step("after", "echo", depends_on=["loop"]),
        step("independent", "echo", args={"value": 1}),
    )
    run = await stepflow.start_pipeline(spec)
    child = temporal_client.get_workflow_handle(f"{run.workflow_id}/loop")

    async def calls_seen() -> int:
        return len(model_server.requests)

    await eventually(calls_seen, lambda n: n >= 13, "the 13th model call, which hangs")
    first_child_run = (await run_chain(temporal_client, child.id))[0]
    await wait_continued(child, first_child_run)

    await stepflow.cancel_step(run.workflow_id, "loop", "enough")
    result = await stepflow.get_result(run.workflow_id)

    loop = result.step("loop")
    assert loop.status is StepStatus.CANCELLED
    assert loop.comment == "enough"
    assert result.step("after").status is StepStatus.SKIPPED
    assert result.step("independent").status is StepStatus.SUCCEEDED


async def test_updates_sent_all_through_a_chain_of_runs_are_each_answered_once(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str, tmp_path: Path
) -> None:
    gate = Gate(journal, tmp_path, "end")
    spec = pipeline(
        *chain(100, journal), gate_step("end", gate, depends_on=["c99"]), max_concurrency=1
    )
    run = await stepflow.start_pipeline(spec)
    # Pause and resume all the while: some requests land in a task that continues as new,
    # or while the next run starts. Each is answered, by one run or the next. (The pause
    # between pairs lets the run hand over: an update in the handing-over task defers it.)
    answers: list[str] = []
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    # At least 60 answers, and on until the run has handed over while they come: on a loaded
    # machine the resumed moments between pairs may not have let it get that far by then.
    # `end` holds the run open whatever the chain has done.
    handed_over = False
    while len(answers) < 60 or (not handed_over and len(answers) < 600):
        if len(answers) >= 60:  # a pair still goes out after the hand-over is seen
            handed_over = (await handle.describe()).run_id != run.run_id
        answers.append(await stepflow.pause(run.workflow_id))
        answers.append(await stepflow.resume(run.workflow_id))
        await asyncio.sleep(0.02)
    gate.open()
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED
    assert set(answers[::2]) == {"paused: no new step starts; running steps finish"}
    assert set(answers[1::2]) == {"resumed"}
    assert set(starts_by_step(journal).values()) == {1}
    runs = await run_chain(temporal_client, run.workflow_id)
    assert len(runs) >= 4
    # Each update was accepted exactly once, by whichever run of the chain was current, and
    # the updates spread over several runs: the hand-overs happened while they were coming.
    accepted = [
        accepted_update_ids(
            (
                await temporal_client.get_workflow_handle(run.workflow_id, run_id=r).fetch_history()
            ).events
        )
        for r in runs
    ]
    ids = [update_id for per_run in accepted for update_id in per_run]
    assert len(ids) == len(set(ids)) == len(answers)
    assert sum(1 for per_run in accepted if per_run) >= 2, [len(a) for a in accepted]


async def test_a_rerun_of_a_chain_takes_over_every_run_s_steps_and_continues_as_new_too(
    worker: None, stepflow: StepflowClient, temporal_client: Client, journal: str
) -> None:
    length = 40
    old = await stepflow.start_pipeline(pipeline(*chain(length, journal)))
    first = await stepflow.get_result(old.workflow_id)
    assert len(await run_chain(temporal_client, old.workflow_id)) >= 2

    rerun = await stepflow.rerun(old.workflow_id, "c30")
    result = await stepflow.get_result(rerun.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert [r.status for r in result.steps[:30]] == [StepStatus.REUSED] * 30
    assert [r.output for r in result.steps] == [r.output for r in first.steps]
    assert starts_by_step(journal) == {f"c{i}": 1 if i < 30 else 2 for i in range(length)}
