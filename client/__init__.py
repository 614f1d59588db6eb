"""The `stepflow` command and the Python API for scripts (`StepflowClient`)."""

from stepflow.client.api import (
    ControlRejected,
    PipelineError,
    PipelineRun,
    RunNotFound,
    StepflowClient,
)

__all__ = ["ControlRejected", "PipelineError", "PipelineRun", "RunNotFound", "StepflowClient"]
