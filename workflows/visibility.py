"""What a pipeline run shows outside: its memo, the Web UI's current details, `StepflowStatus`.

The workflow calls `publish` whenever a record changes. Metrics (`StepCounter`)
ride along: they are not commands, so history is the same with or without them.
"""

from __future__ import annotations

from temporalio import workflow

from stepflow.workflows.control import PIPELINE_ATTRIBUTE, STATUS_ATTRIBUTE, RunStatus
from stepflow.workflows.models import PipelineSpec
from stepflow.workflows.run_state import RunState
from stepflow.workflows.run_view import details_markdown
from stepflow.workflows.step_metrics import StepCounter


class RunVisibility:
    """One run's memo, current details and `StepflowStatus` search attribute."""

    def __init__(self, spec: PipelineSpec, state: RunState) -> None:
        self._pipeline = spec.name
        self._keep_attributes = False
        self._published: RunStatus | None = None
        self._state = state
        # A metric, not a command: each step counted as it reaches a final status.
        state.on_status(StepCounter(spec.name).count)

    def start(self, spec: PipelineSpec) -> None:
        """Memo for runs started without one; search attributes only where the start set them.

        Upserting an attribute the namespace has not registered fails the workflow
        task, so the workflow keeps `StepflowStatus` current only when the run was
        started with `StepflowPipeline` set: proof that both are registered.
        """
        if workflow.memo_value("pipeline", None) is None:
            workflow.upsert_memo({"pipeline": spec.name, "description": spec.description or ""})
        attributes = workflow.info().typed_search_attributes
        self._keep_attributes = attributes.get(PIPELINE_ATTRIBUTE) is not None
        published = attributes.get(STATUS_ATTRIBUTE)
        self._published = RunStatus(published) if published in set(RunStatus) else None

    def publish(self, status: RunStatus) -> None:
        """Refresh the current details and, when it changed, the StepflowStatus attribute."""
        state = self._state
        workflow.set_current_details(
            details_markdown(
                self._pipeline,
                status,
                state.records,
                workflow.now(),
                tally=state.counts,
                active=state.active,
            )
        )
        if self._keep_attributes and status != self._published:
            workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set(status.value)])
            self._published = status
