"""Record the workflow histories that `tests/test_replay.py` replays.

    python -m tests.support.record_histories [SCENARIO ...]   # default: all

Runs each pipeline below on a fresh dev server, against the offline model or
the scripted model server, and writes the history of the pipeline and of each
agent step's child workflow to `tests/histories/`. Re-record only on purpose:
the point of the committed files is that today's workflow code must replay
yesterday's runs. A change that cannot replay them needs `workflow.patched()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.registry import load_tool_modules
from client.api import StepflowClient
from client.loading import load_spec_file
from runtime.devserver import start_ephemeral_environment
from runtime.settings import Settings
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, json_answer, tool_calls
from worker import build_worker
from workflows.control import (
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
from workflows.models import PipelineSpec

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


def _example(path: str) -> Scenario:
    async def scenario(stepflow: StepflowClient, server: ScriptedModelServer) -> str:
        return await _run(stepflow, Path(path).stem.replace("_", "-"), load_spec_file(ROOT / path))

    return scenario


SCENARIOS: dict[str, Scenario] = {
    "tools-dag": tools_dag,
    "agent-scripted": agent_scripted,
    "agent-offline-full": agent_offline_full_context,
    "run-control": run_control,
    "example-research-report": _example("examples/research_report.yaml"),
    "example-code-task": _example("examples/code_task.yaml"),
}


async def _children(client: Client, workflow_id: str) -> list[str]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [
        event.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    ]


async def _save(client: Client, name: str, workflow_id: str) -> list[Path]:
    written = []
    for suffix, wf_id in [("", workflow_id)] + [
        (f".{child.rsplit('/', 1)[-1]}", child) for child in await _children(client, workflow_id)
    ]:
        history = await client.get_workflow_handle(wf_id).fetch_history()
        path = HISTORIES / f"{name}{suffix}.json"
        # The id goes with the history: a child's commands name children by the parent's id.
        saved = {"workflow_id": wf_id, "history": history.to_json_dict()}
        path.write_text(json.dumps(saved, indent=1) + "\n")
        written.append(path)
    return written


async def main(names: list[str]) -> None:
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
    env = await start_ephemeral_environment()
    try:
        stepflow = StepflowClient(env.client, settings=settings)
        tools = load_tool_modules(settings.tool_modules)
        async with build_worker(env.client, settings, tools=tools):
            for name in names or list(SCENARIOS):
                scenario = SCENARIOS[name]
                with ScriptedModelServer() as server:
                    os.environ["OPENAI_BASE_URL"] = server.base_url
                    os.environ["OPENAI_API_KEY"] = "sk-recording-not-a-real-key"
                    if name.startswith(("example-", "agent-offline", "run-control")):
                        del os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
                    workflow_id = await scenario(stepflow, server)
                for path in await _save(env.client, name, workflow_id):
                    print(f"wrote {path.relative_to(ROOT)}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
