"""The `stepflow` command and the Python API for scripts (`StepflowClient`)."""

from client.api import ControlRejected, PipelineError, PipelineRun, RunNotFound, StepflowClient

__all__ = ["ControlRejected", "PipelineError", "PipelineRun", "RunNotFound", "StepflowClient"]
