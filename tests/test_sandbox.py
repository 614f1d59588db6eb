"""Stepflow's workflow code runs inside the workflow sandbox: the SDK checks it, not just passes it.

Only third-party libraries and Stepflow's pure data contracts are passed through
(`workflows.sandbox`); everything with workflow logic is imported in the sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from stepflow.worker import WORKFLOWS
from stepflow.workflows.sandbox import THIRD_PARTY_PASSTHROUGH, workflow_runner

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
        workflow_runner(),
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
