"""The workflow checks its own input: a run started around the client fails at once, for good."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from stepflow.workflows.pipeline import INVALID_PIPELINE, PIPELINE_WORKFLOW


async def start_raw(
    client: Client, task_queue: str, payload: dict[str, Any]
) -> WorkflowFailureError:
    """Start the pipeline workflow with a raw payload, as the `temporal` CLI or a script could."""
    handle = await client.start_workflow(
        PIPELINE_WORKFLOW, payload, id=f"raw-{uuid.uuid4().hex[:8]}", task_queue=task_queue
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    history = await handle.fetch_history()
    failed_tasks = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]
    assert failed_tasks == []  # failed the run, never retried the task
    return failure.value


async def test_a_cycle_fails_the_run_at_once(
    worker: None, temporal_client: Client, task_queue: str
) -> None:
    spec = {
        "name": "raw",
        "steps": [
            {"id": "a", "kind": "tool", "tool": "echo", "depends_on": ["b"]},
            {"id": "b", "kind": "tool", "tool": "echo", "depends_on": ["a"]},
        ],
    }
    error = await start_raw(temporal_client, task_queue, {"spec": spec})
    assert isinstance(error.cause, ApplicationError)
    assert error.cause.type == INVALID_PIPELINE
    assert error.cause.non_retryable
    assert "dependency cycle: a -> b -> a" in error.cause.message


async def test_missing_required_input_fails_the_run_at_once(
    worker: None, temporal_client: Client, task_queue: str
) -> None:
    spec = {
        "name": "raw",
        "inputs": {"topic": {}},
        "steps": [{"id": "a", "kind": "tool", "tool": "echo"}],
    }
    error = await start_raw(temporal_client, task_queue, {"spec": spec})
    assert isinstance(error.cause, ApplicationError)
    assert "inputs.topic: required input is missing" in error.cause.message


async def test_a_payload_that_is_not_a_pipeline_fails_the_run_at_once(
    worker: None, temporal_client: Client, task_queue: str
) -> None:
    error = await start_raw(temporal_client, task_queue, {"spec": {"name": "raw", "steps": "nope"}})
    assert isinstance(error.cause, ApplicationError)
    assert "ValidationError" in (error.cause.type or "")
