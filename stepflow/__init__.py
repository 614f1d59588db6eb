"""Stepflow: durable LLM-agent pipelines on Temporal.

The one import name Stepflow installs. What scripts and tool modules use::

    from stepflow import StepflowClient, tool, tool_context, ToolError
    from stepflow import PipelineSpec  # or stepflow.workflows.models

The subpackages are the project's folders (`stepflow.workflows` is `workflows/`,
`stepflow.activities` is `activities/`, and so on). Names here load on first
use, so workflow code that imports `stepflow.workflows...` inside the sandbox
never pulls in the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "ControlRejected",
    "PipelineError",
    "PipelineResult",
    "PipelineRun",
    "PipelineSpec",
    "RunAlreadyStarted",
    "RunNotFound",
    "StepflowClient",
    "ToolContext",
    "ToolError",
    "tool",
    "tool_context",
]

_WHERE = {
    "ControlRejected": "stepflow.client.api",
    "PipelineError": "stepflow.client.api",
    "PipelineRun": "stepflow.client.api",
    "RunAlreadyStarted": "stepflow.client.api",
    "RunNotFound": "stepflow.client.api",
    "StepflowClient": "stepflow.client.api",
    "PipelineResult": "stepflow.workflows.models",
    "PipelineSpec": "stepflow.workflows.models",
    "ToolContext": "stepflow.activities.context",
    "ToolError": "stepflow.activities.context",
    "tool_context": "stepflow.activities.context",
    "tool": "stepflow.activities.registry",
}

if TYPE_CHECKING:
    from stepflow.activities.context import ToolContext, ToolError, tool_context
    from stepflow.activities.registry import tool
    from stepflow.client.api import (
        ControlRejected,
        PipelineError,
        PipelineRun,
        RunAlreadyStarted,
        RunNotFound,
        StepflowClient,
    )
    from stepflow.workflows.models import PipelineResult, PipelineSpec


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'stepflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
