"""The `stepflow` command and the Python API for scripts (`StepflowClient`)."""

from client.api import PipelineError, PipelineRun, RunNotFound, StepflowClient

__all__ = ["PipelineError", "PipelineRun", "RunNotFound", "StepflowClient"]
