"""Stepflow's workflow code is checked by the SDK's sandbox, and production workers skip its cost.

Workers run the workflow code outside the sandbox unless `STEPFLOW_WORKFLOW_SANDBOX`
asks for it (`workflows.sandbox` says why); the tests' in-process workers ask for
it, and committed histories replay here in the sandbox with nothing of Stepflow
passed through, so the sandbox's checks still see all of it.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from stepflow.client.api import StepflowClient
from stepflow.runtime.plugin import StepflowPlugin
from stepflow.runtime.settings import Settings
from stepflow.worker import WORKFLOWS, build_worker
from stepflow.workflows.models import PipelineStatus
from stepflow.workflows.sandbox import THIRD_PARTY_PASSTHROUGH, workflow_runner
from tests.support.helpers import agent, pipeline, step

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = [
    "tools-dag",
    "agent-scripted.review",
    "run-control",
    "continue-as-new.run2",
    "agent-scripted@by-reference.review",
    "example-triage",
    "example-research-report@control-flow",
    "example-research-report@control-flow.revise.2",
]


def test_no_workflow_module_passes_stepflow_code_through() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "workflows").rglob("*.py"))
        if "imports_passed_through" in path.read_text()
    ]
    assert offenders == []


def _history(name: str) -> WorkflowHistory:
    saved = json.loads((ROOT / "tests" / "histories" / f"{name}.json").read_text())
    return WorkflowHistory.from_json(saved["workflow_id"], saved["history"])


@pytest.mark.parametrize(
    "runner",
    [
        workflow_runner(sandboxed=True),
        # Nothing of Stepflow passed through: the contracts import cleanly in the sandbox too,
        # and the pure helpers passed through for speed run under the sandbox's checks here.
        SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(
                *THIRD_PARTY_PASSTHROUGH
            )
        ),
    ],
    ids=["workflow_runner", "contracts-sandboxed"],
)
async def test_committed_histories_replay_in_the_sandbox(runner: SandboxedWorkflowRunner) -> None:
    replayer = Replayer(
        workflows=WORKFLOWS, data_converter=pydantic_data_converter, workflow_runner=runner
    )
    for name in HISTORIES:
        result = await replayer.replay_workflow(_history(name), raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{name}: {result.replay_failure}"


def test_workers_skip_the_sandbox_unless_the_settings_ask_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STEPFLOW_WORKFLOW_SANDBOX")
    assert isinstance(StepflowPlugin(Settings()).workflow_runner, UnsandboxedWorkflowRunner)
    monkeypatch.setenv("STEPFLOW_WORKFLOW_SANDBOX", "1")
    assert isinstance(StepflowPlugin(Settings()).workflow_runner, SandboxedWorkflowRunner)


def test_workflow_modules_keep_no_module_state_that_runs_could_share() -> None:
    """Outside the sandbox (and passed through it) every run shares a module's globals."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "workflows").rglob("*.py"))
        if any(isinstance(node, ast.Global) for node in ast.walk(ast.parse(path.read_text())))
    ]
    assert offenders == []


async def test_a_worker_outside_the_sandbox_runs_tool_agent_and_for_each_steps(
    temporal_client: Client, settings: Settings
) -> None:
    outside = settings.model_copy(update={"workflow_sandbox": False})
    spec = pipeline(
        step("topics", "echo", args={"value": ["a", "b", "c"]}),
        {
            **step("each", "echo", args={"value": "{{ item }}"}),
            "depends_on": ["topics"],
            "for_each": "{{ steps.topics.output }}",
        },
        agent("write", depends_on=["each"], input="{{ steps.each.output }}"),
    )
    async with build_worker(temporal_client, outside):
        stepflow = StepflowClient(temporal_client, settings=outside)
        result = await stepflow.get_result((await stepflow.start_pipeline(spec)).workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("each").output == ["a", "b", "c"]
    assert result.step("write").output
