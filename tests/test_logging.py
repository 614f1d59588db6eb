"""Tool arguments and outputs stay out of the logs unless STEPFLOW_LOG_CONTENT=1."""

from __future__ import annotations

import pytest

from client.api import StepflowClient
from tests.support.helpers import pipeline, step

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
