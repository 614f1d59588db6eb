"""Tool arguments and outputs stay out of the logs unless STEPFLOW_LOG_CONTENT=1."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineSpec
from tests.support.helpers import pipeline, step
from tests.support.processes import tool_worker_env
from tests.support.worker_processes import running_worker

SECRET = "private-customer-text-7f3a"


async def test_arguments_and_outputs_are_not_logged_by_default(
    worker: None, stepflow: StepflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await stepflow.run_pipeline(pipeline(step("a", "echo", args={"value": SECRET})))
    logs = capsys.readouterr()
    assert "tool call succeeded" in logs.out + logs.err  # the call is logged...
    assert SECRET not in logs.out + logs.err  # ...its content is not


async def test_content_is_logged_when_asked_for(
    worker: None,
    stepflow: StepflowClient,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEPFLOW_LOG_CONTENT", "1")
    await stepflow.run_pipeline(pipeline(step("a", "echo", args={"value": SECRET})))
    logs = capsys.readouterr()
    assert SECRET in logs.out + logs.err


# -- the worker process, as it runs in production ----------------------------------------------

FAILURE = "private-failure-text-91c2"


def content_pipeline() -> PipelineSpec:
    """A tool's arguments and output, and a failure whose message quotes private text."""
    return pipeline(
        step("a", "echo", args={"value": SECRET}),
        step("b", "fail", args={"message": FAILURE, "non_retryable": True}, depends_on=["a"]),
    )


async def run_in_worker_process(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    tmp_path: Path,
    **env: str,
) -> str:
    """Run `content_pipeline` on a `python worker.py` with `env`; its log."""
    log = tmp_path / "worker.log"
    worker_env = tool_worker_env(
        temporal_env.client.service_client.config.target_host,
        task_queue,
        STEPFLOW_PAYLOAD_DIR=str(tmp_path / "payloads"),
        **env,
    )
    async with running_worker(worker_env, log):
        result = await stepflow.run_pipeline(content_pipeline())
    assert result.step("b").error == FAILURE
    return log.read_text()


async def test_the_sdk_s_own_records_hold_no_content_even_at_debug_level(
    temporal_env: WorkflowEnvironment, stepflow: StepflowClient, task_queue: str, tmp_path: Path
) -> None:
    logged = await run_in_worker_process(
        temporal_env, stepflow, task_queue, tmp_path, STEPFLOW_LOG_LEVEL="debug"
    )
    assert "Completing activity as failed" in logged  # the failure is logged...
    assert SECRET not in logged and FAILURE not in logged  # ...not what it said


async def test_the_worker_logs_content_when_asked_for(
    temporal_env: WorkflowEnvironment, stepflow: StepflowClient, task_queue: str, tmp_path: Path
) -> None:
    logged = await run_in_worker_process(
        temporal_env, stepflow, task_queue, tmp_path, STEPFLOW_LOG_CONTENT="1"
    )
    assert SECRET in logged and FAILURE in logged
