"""Today's workflow code replays the committed histories of earlier runs without a difference.

A failure here means a change to workflow code would break runs that are in
flight when it is deployed: guard the change with `workflow.patched()`.
New histories come from `python -m tests.support.record_histories`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from stepflow.worker import WORKFLOWS
from stepflow.workflows.models import PipelineInput, PipelineResult, ToolCallOutput
from stepflow.workflows.pipeline import PIPELINE_WORKFLOW, PipelineWorkflow
from stepflow.workflows.steps.tool import ToolRunner

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = sorted((ROOT / "tests" / "histories").glob("*.json"))


def test_there_are_histories_of_pipelines_and_agent_steps() -> None:
    names = {path.stem for path in HISTORIES}
    assert "tools-dag" in names and "agent-scripted.review" in names
    # Run control: updates, signals, a durable timer, search attributes, progress reports.
    assert "run-control" in names and "run-control.plan" in names
    # Long runs: a pipeline and an agent loop that continued as new, every run of each chain.
    assert {"continue-as-new.run2", "continue-as-new.loop.run2"} <= names


def test_there_are_histories_of_control_flow_and_of_the_child_runs_it_makes() -> None:
    """`when`/`trigger`, a for_each, a loop and a sub-pipeline: the parent run and its children."""
    names = {path.stem for path in HISTORIES}
    report = "example-research-report@control-flow"
    assert {
        report,  # for_each over the plan, a loop that ends by `until`, `outputs`
        f"{report}.research[0]",  # a for_each instance (an agent step)
        f"{report}.revise.1",  # loop iterations: child pipeline runs
        f"{report}.revise.2",
        f"{report}.revise.2.review",  # an agent step inside an iteration
        "example-triage",  # conditions on both branches, a `none_failed` join
        "example-triage.translate",  # a sub-pipeline: a child pipeline run
        "example-triage.translate.translation",
    } <= names


def test_every_example_pipeline_has_a_committed_history() -> None:
    """`make histories` records one per example; a new example without one fails here."""
    names = {path.stem for path in HISTORIES}
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    missing = [p.name for p in examples if f"example-{p.stem.replace('_', '-')}" not in names]
    assert not missing, f"no history for {missing}: run `make histories` and commit them"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    saved = json.loads(path.read_text())
    history = WorkflowHistory.from_json(saved["workflow_id"], saved["history"])
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


class _SleepFirst(ToolRunner):
    async def call(self, ctx: Any, step: Any, args: Any = None) -> ToolCallOutput:
        await workflow.sleep(timedelta(milliseconds=1))
        return await super().call(ctx, step, args)


@workflow.defn(name=PIPELINE_WORKFLOW, sandboxed=False)
class _UnguardedChange(PipelineWorkflow):
    """Today's pipeline plus one new command before each tool call, without `workflow.patched`."""

    runners = {**PipelineWorkflow.runners, "tool": _SleepFirst()}

    @workflow.run
    async def run(self, input: PipelineInput) -> PipelineResult:
        return await super().run(input)


async def test_a_change_without_patched_fails_the_replay() -> None:
    """The guard works: this suite fails when workflow logic changes under running jobs."""
    saved = json.loads((Path(__file__).parent / "histories" / "tools-dag.json").read_text())
    history = WorkflowHistory.from_json(saved["workflow_id"], saved["history"])
    replayer = Replayer(workflows=[_UnguardedChange], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, NondeterminismError), result.replay_failure
