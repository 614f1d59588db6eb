"""`output_schema: package.module:Model` imports only from modules the worker trusts.

Importing a module runs it, so the module a run names must be one of
STEPFLOW_TOOL_MODULES or STEPFLOW_SCHEMA_MODULES, or inside one of them; anything
else is refused before it is imported. `tests/support/untrusted_schemas.py` is
trusted by no test: finding it in `sys.modules` would mean it was imported.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from stepflow.activities import output_schema
from stepflow.client.api import StepflowClient
from stepflow.workflows.models import StepStatus
from stepflow.workflows.pipeline import PIPELINE_WORKFLOW
from tests.test_validation import bad, validate

UNTRUSTED = "tests.support.untrusted_schemas"


@pytest.fixture
def never_imported() -> Iterator[None]:
    assert UNTRUSTED not in sys.modules, "another test imported the untrusted module"
    yield
    assert UNTRUSTED not in sys.modules


async def test_an_untrusted_model_fails_the_agent_step_at_once_without_importing_it(
    never_imported: None,
    worker: None,
    temporal_client: Client,
    stepflow: StepflowClient,
    task_queue: str,
) -> None:
    # Started around the client, whose validation would refuse the path before the run.
    spec = {
        "name": "imports",
        "steps": [
            {
                "id": "review",
                "kind": "agent",
                "instructions": "x",
                "output_schema": f"{UNTRUSTED}:Answer",
                "model_retry": {"max_attempts": 5, "initial_interval": "1s"},
            }
        ],
    }
    workflow_id = f"imports-{uuid.uuid4().hex[:8]}"
    await temporal_client.start_workflow(
        PIPELINE_WORKFLOW, {"spec": spec}, id=workflow_id, task_queue=task_queue
    )
    result = await stepflow.get_result(workflow_id)

    record = result.step("review")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "InvalidOutputSchema"
    assert record.error is not None
    assert (
        f"output_schema '{UNTRUSTED}:Answer': module '{UNTRUSTED}' is not trusted; add it "
        "(or its package) to STEPFLOW_SCHEMA_MODULES" in record.error
    )
    # One attempt of the model call, though its policy allows five: the refusal is for good.
    parent = await temporal_client.get_workflow_handle(workflow_id).fetch_history()
    (child_id,) = [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in parent.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]
    child = await temporal_client.get_workflow_handle(child_id).fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in child.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert attempts == [1]


def test_validate_refuses_an_untrusted_model_without_importing_it(
    never_imported: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = f"- {{id: a, kind: agent, instructions: x, output_schema: '{UNTRUSTED}:Answer'}}"
    code, output = validate(tmp_path, capsys, bad(steps))
    assert code == 2, output
    assert " ".join(output.split()) == (
        f"{tmp_path / 'pipeline.yaml'}: step 'a': output_schema: output_schema "
        f"'{UNTRUSTED}:Answer': module '{UNTRUSTED}' is not trusted; add it (or its package) "
        "to STEPFLOW_SCHEMA_MODULES where the workers and `stepflow` run"
    )


@pytest.mark.parametrize(
    "path",
    [
        "os:system",
        "subprocess:Popen",
        "builtins:eval",
        "importlib:import_module",
        "tests.support.schemas_elsewhere:Verdict",  # shares a prefix, is not inside
        "tests:support",
    ],
)
def test_modules_a_run_names_are_refused_before_any_import(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    imported: list[str] = []
    monkeypatch.setattr(output_schema, "importlib", SimpleNamespace(import_module=imported.append))
    with pytest.raises(ApplicationError) as caught:
        output_schema.resolve_output_schema(path)
    assert caught.value.type == "InvalidOutputSchema" and caught.value.non_retryable
    assert "is not trusted" in caught.value.message
    assert imported == []


def test_tool_modules_and_schema_modules_are_trusted_with_the_modules_inside_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verdict = "tests.support.schemas:Verdict"
    monkeypatch.setenv("STEPFLOW_SCHEMA_MODULES", "")
    monkeypatch.setenv("STEPFLOW_TOOL_MODULES", "")
    with pytest.raises(ApplicationError):
        output_schema.resolve_output_schema(verdict)
    for variable in ("STEPFLOW_TOOL_MODULES", "STEPFLOW_SCHEMA_MODULES"):
        for trusted in ("tests.support.schemas", "tests.support", "tests"):
            monkeypatch.setenv(variable, f"examples.tools, {trusted}")
            resolved = output_schema.resolve_output_schema(verdict)
            assert resolved.model is not None and resolved.model.__name__ == "Verdict"
        monkeypatch.setenv(variable, "")

    assert output_schema.is_trusted("mytools.schemas", ["mytools"])
    assert output_schema.is_trusted("mytools.schemas", ["mytools.schemas"])
    assert not output_schema.is_trusted("mytools", ["mytools.schemas"])
    assert not output_schema.is_trusted("mytools_evil", ["mytools"])
