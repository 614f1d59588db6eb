"""What every step runner gets and gives: `StepContext` in, an output out, `StepFailure` else.

A step kind is one module of this package with a runner behind `StepRunner`,
and one line in the registry (`steps.RUNNERS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from temporalio import workflow

from stepflow.workflows.errors import ErrorType, StepFailure
from stepflow.workflows.models import (
    AgentStep,
    ApprovalStep,
    InputStep,
    PipelineSpec,
    StepRecord,
    TaskRouting,
    ToolStep,
)
from stepflow.workflows.run_state import RunState
from stepflow.workflows.templates import TemplateError, render

AnyStep = ToolStep | AgentStep | ApprovalStep | InputStep


@dataclass
class StepContext:
    """The run a step belongs to, as much of it as a step may use."""

    spec: PipelineSpec
    inputs: dict[str, Any]
    """The run's checked inputs."""
    state: RunState
    routing: TaskRouting | None
    publish: Callable[[], None]
    """Refresh what the run shows (details, status attribute) after a record changed."""
    cancelling: Callable[[], bool]
    """Whether the whole run is cancelling its steps (not one step being cancelled)."""

    def render(self, step: AnyStep, template: Any) -> Any:
        """`template` with the run's inputs and the outputs of the steps `step` depends on."""
        try:
            return render(template, self.inputs, self.state.outputs(step.depends_on))
        except TemplateError as err:
            raise StepFailure(ErrorType.INVALID_REFERENCE, str(err), attempts=0) from None


class StepRunner(Protocol):
    """Runs one kind of step."""

    async def run(self, ctx: StepContext, step: Any, record: StepRecord, resume: bool) -> Any:
        """Run `step`, keeping `record` current; return its output.

        Args:
            resume: The run before left this step running (a person still to
                answer); this run takes it over.

        Raises:
            StepFailure: The step failed for good.
            asyncio.CancelledError: The step was cancelled.
        """
        ...


def idempotency_key(step_id: str) -> str:
    """The same on every retry, and across continue-as-new."""
    info = workflow.info()
    return f"{info.workflow_id}/{info.first_execution_run_id}/{step_id}"
