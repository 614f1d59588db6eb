"""The Python API for scripts: start pipelines and read their results.

client = await StepflowClient.connect()
run = await client.start_pipeline("examples/hello.yaml", {"topic": "durable agents"})
result = await client.get_result(run.workflow_id)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from client.loading import check_spec, load_spec_file
from runtime.connection import connect
from runtime.settings import Settings, get_settings
from workflows.models import PipelineInput, PipelineResult, PipelineSpec
from workflows.pipeline import PIPELINE_FAILED, PipelineWorkflow
from workflows.validation import resolve_inputs


class PipelineError(RuntimeError):
    """A run ended without a `PipelineResult`: invalid, cancelled, terminated or timed out."""


class RunNotFound(LookupError):
    """No run with that workflow id in this namespace."""


@dataclass(frozen=True)
class PipelineRun:
    """A started run."""

    workflow_id: str
    run_id: str
    ui_url: str


class StepflowClient:
    """Starts pipelines on a Temporal namespace and reads their results."""

    def __init__(self, client: Client, *, settings: Settings | None = None) -> None:
        self.temporal = client
        self.settings = settings or get_settings()

    @classmethod
    async def connect(cls, profile: str | None = None) -> StepflowClient:
        """Connect per TEMPORAL_* settings (`runtime.connection`)."""
        return cls(await connect(profile))

    def ui_url(self, workflow_id: str, run_id: str | None = None) -> str:
        """The run's page in the Temporal Web UI."""
        base = self.settings.ui_url.rstrip("/")
        url = f"{base}/namespaces/{self.temporal.namespace}/workflows/{workflow_id}"
        return f"{url}/{run_id}/history" if run_id else url

    async def start_pipeline(
        self,
        pipeline: PipelineSpec | str | Path,
        inputs: dict[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        task_queue: str | None = None,
    ) -> PipelineRun:
        """Validate a pipeline and its inputs completely, then start it.

        Args:
            pipeline: A spec, or the path of a YAML file.
            inputs: Values of the pipeline's inputs (checked against their types).
            workflow_id: Defaults to `<pipeline-name>-<8 hex digits>`.
            task_queue: Defaults to STEPFLOW_TASK_QUEUE (`stepflow`).

        Raises:
            workflows.validation.SpecError: the pipeline or inputs are invalid; nothing started.
        """
        spec = pipeline if isinstance(pipeline, PipelineSpec) else load_spec_file(pipeline)
        check_spec(spec)
        resolved = resolve_inputs(spec, inputs or {})
        workflow_id = workflow_id or f"{spec.name}-{uuid.uuid4().hex[:8]}"
        handle = await self.temporal.start_workflow(
            PipelineWorkflow.run,
            PipelineInput(spec=spec, inputs=resolved),
            id=workflow_id,
            task_queue=task_queue or self.settings.task_queue,
            memo={"pipeline": spec.name, "description": spec.description or ""},
            static_summary=f"pipeline {spec.name}",
        )
        run_id = handle.result_run_id or ""
        return PipelineRun(workflow_id, run_id, self.ui_url(workflow_id, run_id))

    async def get_result(self, workflow_id: str, run_id: str | None = None) -> PipelineResult:
        """Wait for a run to end and return its result; a failed pipeline's too.

        Raises:
            RunNotFound: no such run.
            PipelineError: the run ended without a result (invalid spec, cancelled, ...).
        """
        handle = self.temporal.get_workflow_handle_for(
            PipelineWorkflow.run, workflow_id, run_id=run_id
        )
        try:
            return await handle.result(follow_runs=True)
        except WorkflowFailureError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == PIPELINE_FAILED:
                return PipelineResult.model_validate(cause.details[0])
            message = cause.message if hasattr(cause, "message") else str(cause)
            raise PipelineError(f"run {workflow_id} ended without a result: {message}") from err
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise RunNotFound(f"no run with id {workflow_id!r}") from None
            raise

    async def run_pipeline(
        self,
        pipeline: PipelineSpec | str | Path,
        inputs: dict[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        task_queue: str | None = None,
    ) -> PipelineResult:
        """`start_pipeline` then `get_result`."""
        run = await self.start_pipeline(
            pipeline, inputs, workflow_id=workflow_id, task_queue=task_queue
        )
        return await self.get_result(run.workflow_id, run.run_id)


__all__ = ["PipelineError", "PipelineRun", "RunNotFound", "StepflowClient"]
