"""Record the workflow histories that `tests/test_replay.py` replays.

    python -m tests.support.record_histories [SCENARIO ...]   # default: all (`make histories`)
    python -m tests.support.record_histories --tag v2 run-control   # run-control@v2*.json

Runs each pipeline below on a fresh dev server, against the offline model or
the scripted model server, and writes the history of the pipeline and of each
agent step's child workflow to `tests/histories/`. Re-record only on purpose:
the point of the committed files is that today's workflow code must replay
yesterday's runs. A change that cannot replay them needs `workflow.patched()`.
So a scenario whose history is already committed is skipped: after a patched
change, record it again under a tag (`--tag`), next to the old files, which
stand for the runs still in flight.

A workflow that continued as new is saved run by run: `NAME.json` is the first
run, `NAME.run2.json` the next, and so on (children likewise). The scenarios in
`LOW_LIMIT` run on a server of their own that suggests continuing as new early.

Children are saved at every depth, named by their id below the run's, `/` read
as `.`: an agent step `NAME.plan.json`, a for_each instance
`NAME.research[0].json`, a loop's second iteration `NAME.revise.2.json` and the
agent step in it `NAME.revise.2.review.json`, a sub-pipeline `NAME.translate.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.client.loading import load_spec_file
from stepflow.runtime.devserver import continue_as_new_early, start_ephemeral_environment
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.control import (
    APPROVE,
    CANCEL_STEP,
    INPUT,
    PAUSE,
    RESUME,
    STATUS_QUERY,
    PipelineState,
    StepInput,
    StepRequest,
)
from stepflow.workflows.models import PipelineSpec
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import (
    ScriptedModelServer,
    by_model,
    error,
    json_answer,
    text,
    tool_calls,
)

ROOT = Path(__file__).resolve().parents[2]
HISTORIES = ROOT / "tests" / "histories"

Scenario = Callable[[StepflowClient, ScriptedModelServer], Awaitable[str]]


async def _run(stepflow: StepflowClient, name: str, spec: PipelineSpec | Path) -> str:
    run = await stepflow.start_pipeline(spec, workflow_id=f"{name}-{uuid.uuid4().hex[:8]}")
    await stepflow.get_result(run.workflow_id)
    return run.workflow_id


async def tools_dag(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    spec = pipeline(
        step("a", "echo", args={"value": {"n": 1}}),
        step("b", "echo", depends_on=["a"], args={"value": "{{ steps.a.output.n }}"}),
        step(
            "c",
            "fail",
            depends_on=["a"],
            args={"message": "x", "non_retryable": True},
            on_failure={"fallback": 0},
        ),
        step("d", "fail", args={"message": "y", "non_retryable": True}, on_failure="continue"),
        step("e", "echo", depends_on=["d"]),
        step("f", "echo", depends_on=["b", "c"], args={"value": "{{ steps.c.output }}"}),
        name="tools-dag",
    )
    return await _run(stepflow, "tools-dag", spec)


async def agent_scripted(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    """Tool calls (one refused, two run in parallel), a repaired answer, a downstream step."""
    server.play(
        tool_calls(("echo", {"value": 1}), ("echo", {"value": 2}), ("nope", {})),
        tool_calls(("echo", '{"value": '), content="thinking"),
        json_answer({"verdict": "maybe"}),
        json_answer({"verdict": "approve"}),
    )
    spec = pipeline(
        agent(
            "review",
            tools=["echo"],
            input={"draft": "text"},
            output_schema={
                "type": "object",
                "properties": {"verdict": {"enum": ["approve", "reject"]}},
                "required": ["verdict"],
            },
        ),
        step("after", "echo", depends_on=["review"], args={"value": "{{ steps.review.output }}"}),
        name="agent-scripted",
    )
    return await _run(stepflow, "agent-scripted", spec)


async def agent_inline(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    """`inline: true`: the loop in the pipeline's history: a retried call (its report a signal
    to the pipeline), tool calls (one local, one refused), a repaired answer, then a step."""
    server.play(
        error(429, "slow down", headers={"retry-after-ms": "100"}),
        tool_calls(("echo", {"value": 1}), ("word_count", {"text": "a b c"}), ("nope", {})),
        json_answer({"verdict": "maybe"}),
        json_answer({"verdict": "approve"}),
    )
    spec = pipeline(
        agent(
            "review",
            tools=["echo", "word_count"],
            local_tools=["echo"],
            input={"draft": "text"},
            inline=True,
            model_retry={"initial_interval": "100ms", "max_attempts": 3},
            output_schema={
                "type": "object",
                "properties": {"verdict": {"enum": ["approve", "reject"]}},
                "required": ["verdict"],
            },
        ),
        step("after", "echo", depends_on=["review"], args={"value": "{{ steps.review.output }}"}),
        name="agent-inline",
    )
    return await _run(stepflow, "agent-inline", spec)


async def agent_offline_full_context(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    spec = pipeline(
        step("facts", "echo", args={"value": {"text": "tides follow the moon"}}),
        agent(
            "count",
            "Count words with word_count.",
            tools=["word_count"],
            model="offline",
            depends_on=["facts"],
            input="{{ steps.facts.output }}",
        ),
        agent("sum_up", "Sum up.", model="offline", depends_on=["count"]),
        context="full",
        name="agent-offline-full",
    )
    return await _run(stepflow, "agent-offline-full", spec)


async def _wait_for(stepflow: StepflowClient, workflow_id: str, step_id: str, status: str) -> None:
    handle = stepflow.temporal.get_workflow_handle(workflow_id)
    for _ in range(300):
        state = await handle.query(STATUS_QUERY, result_type=PipelineState)
        if state.step(step_id).status == status:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"step {step_id!r} never became {status}")


async def run_control(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    """Approval, input, pause/resume, a cancelled step, a retry report, agent progress."""
    with tempfile.TemporaryDirectory() as scratch:
        journal = str(Path(scratch) / "journal.jsonl")
        spec = pipeline(
            step(
                "flaky",
                "flaky",
                args={"journal": journal, "succeed_on": 2},
                retry={"initial_interval": "100ms"},
            ),
            {
                "id": "gate",
                "kind": "approval",
                "message": "go on after {{ steps.flaky.output }}?",
                "depends_on": ["flaky"],
            },
            {
                "id": "budget",
                "kind": "input",
                "schema": {"type": "integer"},
                "depends_on": ["gate"],
            },
            {"id": "auto", "kind": "approval", "timeout": "1s", "on_timeout": "approve"},
            step("dropped", "echo", depends_on=["budget"], on_failure="continue"),
            agent(
                "plan",
                model="offline",
                depends_on=["budget", "auto"],
                input="{{ steps.budget.output }}",
            ),
            name="run-control",
        )
        run = await stepflow.start_pipeline(spec, workflow_id=f"run-control-{uuid.uuid4().hex[:8]}")
        handle = stepflow.temporal.get_workflow_handle(run.workflow_id)
        await _wait_for(stepflow, run.workflow_id, "gate", "WAITING")
        await handle.execute_update(PAUSE)
        await handle.execute_update(APPROVE, StepRequest(step="gate", comment="fine"))
        await handle.execute_update(CANCEL_STEP, StepRequest(step="dropped", comment="later"))
        await handle.execute_update(RESUME)
        await _wait_for(stepflow, run.workflow_id, "budget", "WAITING")
        await handle.signal(INPUT, StepInput(step="budget", value=1200))
        await stepflow.get_result(run.workflow_id)
        return run.workflow_id


CONTINUE_AS_NEW_AT = 40
"""The `continue-as-new` scenario's server suggests continuing as new after this many events."""


async def continue_as_new(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    """A pipeline and an agent step that continue as new, an approval waiting across it."""
    server.play(*[tool_calls(("echo", {"value": n})) for n in range(6)], text("echoed six"))
    chain = [step("c0", "echo", args={"value": 0})] + [
        step(f"c{i}", "echo", depends_on=[f"c{i - 1}"], args={"value": i}) for i in range(1, 12)
    ]
    spec = pipeline(
        *chain,
        {
            "id": "ask",
            "kind": "approval",
            "message": "go on after {{ steps.c0.output }}?",
            "timeout": "1h",
            "depends_on": ["c0"],
        },
        agent("loop", tools=["echo"], input="echo six times"),
        step("after", "echo", depends_on=["ask", "loop", "c11"], args={"value": "done"}),
        name="continue-as-new",
    )
    run = await stepflow.start_pipeline(spec, workflow_id=f"continue-as-new-{uuid.uuid4().hex[:8]}")
    handle = stepflow.temporal.get_workflow_handle(run.workflow_id)
    for _ in range(600):  # `ask` waits on in the next run, until someone approves it there
        if (await handle.describe()).run_id != run.run_id:
            break
        await asyncio.sleep(0.05)
    else:
        raise TimeoutError("the pipeline never continued as new")
    await _wait_for(stepflow, run.workflow_id, "ask", "WAITING")
    await handle.execute_update(APPROVE, StepRequest(step="ask", comment="yes"))
    await stepflow.get_result(run.workflow_id)
    return run.workflow_id


async def plan_away(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    """A plan waiting for approval frees its slot (one here) for a chain of steps, and the run
    continues as new while it waits; it is approved in the next run."""
    server.play(json_answer({"steps": [step("a", "echo", args={"value": "{{ inputs.request }}"})]}))
    chain = [step("c0", "echo", args={"value": 0})] + [
        step(f"c{i}", "echo", depends_on=[f"c{i - 1}"], args={"value": i}) for i in range(1, 12)
    ]
    spec = pipeline(
        {
            "id": "plan",
            "kind": "plan",
            "instructions": "Plan the work on tides.",
            "input": "tides",
            "allow": {"tools": ["echo"], "max_steps": 2},
            "approve": {"message": "Run it?", "timeout": "1h"},
        },
        *chain,
        step("after", "echo", depends_on=["plan", "c11"], args={"value": "done"}),
        name="plan-away",
        max_concurrency=1,
    )
    run = await stepflow.start_pipeline(spec, workflow_id=f"plan-away-{uuid.uuid4().hex[:8]}")
    handle = stepflow.temporal.get_workflow_handle(run.workflow_id)
    await _wait_for(stepflow, run.workflow_id, "c11", "SUCCEEDED")
    if (await handle.describe()).run_id == run.run_id:
        raise TimeoutError("the pipeline did not continue as new while the plan waited")
    await stepflow.approve(run.workflow_id, "plan", "go")
    await stepflow.get_result(run.workflow_id)
    return run.workflow_id


LOW_LIMIT = {"continue-as-new", "plan-away"}


async def _low_limit_environment() -> WorkflowEnvironment:
    return await start_ephemeral_environment(extra_flags=continue_as_new_early(CONTINUE_AS_NEW_AT))


def _example(path: str) -> Scenario:
    async def scenario(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
        return await _run(stepflow, Path(path).stem.replace("_", "-"), load_spec_file(ROOT / path))

    return scenario


async def release_notes(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    """The example that waits for people: an input, then a sign-off."""
    spec = load_spec_file(ROOT / "examples/release_notes.yaml")
    run = await stepflow.start_pipeline(spec, workflow_id=f"release-notes-{uuid.uuid4().hex[:8]}")
    await _wait_for(stepflow, run.workflow_id, "highlights", "WAITING")
    await stepflow.give_input(run.workflow_id, "highlights", 2)
    await _wait_for(stepflow, run.workflow_id, "sign-off", "WAITING")
    await stepflow.approve(run.workflow_id, "sign-off", "ship it")
    await stepflow.get_result(run.workflow_id)
    return run.workflow_id


INVALID_PLAN = {
    "steps": [
        {"id": "fetch", "kind": "tool", "tool": "echo", "args": {"value": "{{ inputs.request }}"}},
        agent("sum_up", "Sum up.", input="{{ steps.fetch.output }}"),
    ]
}
"""`sum_up` reads `fetch` without depending on it: the repair says so."""

VALID_PLAN = {
    "steps": [
        {"id": "fetch", "kind": "tool", "tool": "echo", "args": {"value": "{{ inputs.request }}"}},
        agent("sum_up", "Sum up.", input="{{ steps.fetch.output }}", depends_on=["fetch"]),
    ],
    "outputs": {"summary": "{{ steps.sum_up.output }}"},
}


async def plan_scripted(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    server.play(json_answer(INVALID_PLAN), json_answer(VALID_PLAN), text("tides, summed up"))
    spec = pipeline(
        step("topic", "echo", args={"value": "tides"}),
        {
            "id": "plan",
            "kind": "plan",
            "depends_on": ["topic"],
            "instructions": "Plan the work on {{ steps.topic.output }}.",
            "input": "{{ steps.topic.output }}",
            "allow": {"tools": ["echo"], "max_steps": 3},
            "max_plan_repairs": 1,
            "approve": {"message": "Run it?", "timeout": "1h"},
        },
        step("after", "echo", depends_on=["plan"], args={"value": "{{ steps.plan.output }}"}),
        name="plan-scripted",
    )
    run = await stepflow.start_pipeline(spec, workflow_id=f"plan-scripted-{uuid.uuid4().hex[:8]}")
    await _wait_for(stepflow, run.workflow_id, "plan", "WAITING")
    await stepflow.approve(run.workflow_id, "plan", "go")
    await stepflow.get_result(run.workflow_id)
    return run.workflow_id


PRICE = {"input": 2.0, "output": 10.0}
"""USD per million tokens of the scripted models of `budget_chain`."""


async def budget_chain(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
    """A run with a budget: its ledger charged and closed; a step whose model chain passes
    over a rate-limited primary (the backup answers, the next call asks the primary again);
    an inline step with a budget of its own."""
    os.environ["STEPFLOW_MODELS"] = json.dumps(
        {name: {"base_url": server.base_url, "price": PRICE} for name in ("primary", "backup")}
    )
    server.respond_with(
        by_model(
            primary=[
                error(429, "slow down", headers={"retry-after-ms": "100"}),
                error(429, "slow down", headers={"retry-after-ms": "100"}),
                text("found it", usage=(300, 30)),
                text("summed up", usage=(200, 20)),
            ],
            backup=[tool_calls(("echo", {"value": "tides"}), usage=(250, 25))],
        )
    )
    quick = {"initial_interval": "100ms", "backoff_coefficient": 1.0}
    spec = pipeline(
        agent(
            "research",
            tools=["echo"],
            model=["primary", "backup"],
            model_retry=quick,
            model_fallback={"after_attempts": 2},
        ),
        agent(
            "sum_up",
            model="primary",
            inline=True,
            budget={"tokens": 5_000},
            input="{{ steps.research.output }}",
            depends_on=["research"],
        ),
        name="budget-chain",
        budget={"tokens": 50_000, "cost": 1.0},
    )
    try:
        return await _run(stepflow, "budget-chain", spec)
    finally:
        del os.environ["STEPFLOW_MODELS"]


SCENARIOS: dict[str, Scenario] = {
    "tools-dag": tools_dag,
    "agent-scripted": agent_scripted,
    "agent-offline-full": agent_offline_full_context,
    "agent-inline": agent_inline,
    "run-control": run_control,
    "example-research-report": _example("examples/research_report.yaml"),
    "example-code-task": _example("examples/code_task.yaml"),
    "example-release-notes": release_notes,
    # Control flow: a for_each over a plan, a review loop (recorded @control-flow, next to the
    # research report's first history), if/else branches, a join and a sub-pipeline.
    "example-triage": _example("examples/triage.yaml"),
    "example-translate": _example("examples/translate.yaml"),
    "continue-as-new": continue_as_new,
    # Plan steps: the planned code task on the offline model (the planner, the planned run and
    # its agent steps), and a scripted planner with one repair, an approval and a planned agent.
    "example-code-task-planned": _example("examples/code_task_planned.yaml"),
    "plan-scripted": plan_scripted,
    "budget-chain": budget_chain,
    "plan-away": plan_away,
}


async def _runs(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """The history of each run of a workflow, the first to the last it continued as."""
    latest = (await client.get_workflow_handle(workflow_id).fetch_history()).events[0]
    run_id = latest.workflow_execution_started_event_attributes.first_execution_run_id
    histories = []
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1]
        if last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return histories
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id


def _children(runs: list[WorkflowHistory]) -> list[str]:
    return [
        event.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
        for history in runs
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    ]


def _recorded(name: str) -> bool:
    return (HISTORIES / f"{name}.json").exists()


async def _save(client: Client, name: str, workflow_id: str, suffix: str = "") -> list[Path]:
    """Save every run of `workflow_id`, then its children's, at every depth."""
    written = []
    runs = await _runs(client, workflow_id)
    for number, history in enumerate(runs, start=1):
        path = HISTORIES / f"{name}{suffix}{'' if number == 1 else f'.run{number}'}.json"
        # The id goes with the history: a child's commands name children by the parent's id.
        saved = {"workflow_id": workflow_id, "history": history.to_json_dict()}
        path.write_text(json.dumps(saved, indent=1) + "\n")
        written.append(path)
    for child in dict.fromkeys(_children(runs)):  # a child id once, in the order they started
        below = child.removeprefix(f"{workflow_id}/").replace("/", ".")
        written += await _save(client, name, child, f"{suffix}.{below}")
    return written


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--tag", help="record as NAME@TAG (scenarios already committed)")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.scenarios if name not in SCENARIOS]:
        parser.error(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    HISTORIES.mkdir(parents=True, exist_ok=True)
    workspace = tempfile.mkdtemp(prefix="stepflow-record-")
    os.environ.update(
        STEPFLOW_TOOL_MODULES="tests.support.tools,examples.tools",
        STEPFLOW_WORKSPACE=workspace,
        STEPFLOW_TASK_QUEUE=f"record-{uuid.uuid4()}",
    )
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "STEPFLOW_MODELS", "STEPFLOW_DEFAULT_MODEL"):
        os.environ.pop(name, None)
    settings = Settings()
    wanted = {
        name: f"{name}@{args.tag}" if args.tag else name for name in args.scenarios or SCENARIOS
    }
    for name, saved_as in list(wanted.items()):
        if _recorded(saved_as):
            print(f"kept tests/histories/{saved_as}.json: committed histories are never replaced")
            del wanted[name]
    names = list(wanted)
    usual = [name for name in names if name not in LOW_LIMIT]
    low = [name for name in names if name in LOW_LIMIT]
    for start, chosen in ((start_ephemeral_environment, usual), (_low_limit_environment, low)):
        if chosen:
            await _record(await start(), settings, {name: wanted[name] for name in chosen})


async def _record(env: WorkflowEnvironment, settings: Settings, names: dict[str, str]) -> None:
    """Run each scenario (name -> the name its files are saved as) and save its histories."""
    try:
        stepflow = StepflowClient(env.client, settings=settings)
        tools = load_tool_modules(settings.tool_modules)
        async with build_worker(env.client, settings, tools=tools):
            for name in names:
                scenario = SCENARIOS[name]
                with ScriptedModelServer() as server:
                    os.environ["OPENAI_BASE_URL"] = server.base_url
                    os.environ["OPENAI_API_KEY"] = "sk-recording-not-a-real-key"
                    if name.startswith(("example-", "agent-offline", "run-control")):
                        del os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
                    workflow_id = await scenario(stepflow, server)
                for path in await _save(env.client, names[name], workflow_id):
                    print(f"wrote {path.relative_to(ROOT)}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
