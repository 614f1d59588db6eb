"""The run-control contract: the `status` query, the control updates and signals, their payloads.

A running pipeline answers:

- query `status` -> `PipelineState`;
- updates `pause`, `resume`, `cancel_step`, `approve`, `reject`, `input`. Each
  has a validator, so a request that makes no sense (an unknown step, a step
  that is not waiting) is rejected with a clear message and never reaches
  history;
- signals of the same names and payloads, for fire-and-forget senders such as
  `temporal workflow signal`. A signal cannot be refused, so one that fails
  the same check is logged and ignored;
- signal `step_progress`, sent by Stepflow itself (agent steps, retried
  activities), never by users.

Pure models and names: the client, the workflow sandbox and the `temporal` CLI
(as JSON) all use them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from temporalio.common import SearchAttributeKey

from stepflow.workflows.models import BudgetSpent, StepRecord, StepStatus, TokenUsage, UsageByModel

STATUS_QUERY = "status"
PAUSE = "pause"
RESUME = "resume"
CANCEL_STEP = "cancel_step"
APPROVE = "approve"
REJECT = "reject"
INPUT = "input"
STEP_PROGRESS = "step_progress"

PIPELINE_ATTRIBUTE = SearchAttributeKey.for_keyword("StepflowPipeline")
RERUN_ATTRIBUTE = SearchAttributeKey.for_keyword("StepflowRerunOf")
"""Set on a rerun: the workflow id of the run it reruns, so that run can list its reruns."""
"""The pipeline's name; set when the run starts."""
STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("StepflowStatus")
"""A `RunStatus` value, kept current by the workflow."""


class RunStatus(StrEnum):
    """Where a whole run is; also the value of the `StepflowStatus` search attribute."""

    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    """Paused by request: no new step starts; running ones finish."""
    WAITING = "WAITING"
    """Some step waits for an approval or an input."""
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class PipelineState(BaseModel):
    """The answer to the `status` query: the run now, step by step."""

    workflow_id: str
    pipeline: str
    description: str | None = None
    status: RunStatus
    steps: list[StepRecord] = Field(description="One record per step, in spec order.")
    counts: dict[StepStatus, int] = Field(description="How many steps are in each status.")
    usage: TokenUsage = Field(description="Tokens of every agent step so far, running ones too.")
    started_at: datetime
    as_of: datetime = Field(
        description="Workflow time of the last event the run processed; elapsed times count to it."
    )
    error: str | None = None
    usage_by_model: UsageByModel = Field(
        default_factory=dict, description="Tokens and cost so far, per model."
    )
    budget: BudgetSpent | None = Field(
        default=None, description="A run with a `budget`: what it has spent against it."
    )

    def step(self, step_id: str) -> StepRecord:
        for record in self.steps:
            if record.id == step_id:
                return record
        raise KeyError(step_id)

    @property
    def finished(self) -> bool:
        return self.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepRequest(BaseModel):
    """Payload of `cancel_step`, `approve` and `reject`: `{"step": "deploy", "comment": "..."}`."""

    step: str
    comment: str | None = None


class StepInput(BaseModel):
    """Payload of `input`: `{"step": "ask-budget", "value": 1200}`."""

    step: str
    value: Any = None


AGENT_PROGRESS_QUERY = "stepflow_agent_progress"
"""An agent step's child answers it: where its loop is (the client adds it to `status`)."""


class AgentProgress(BaseModel):
    """A running agent step's loop, as its own workflow knows it."""

    model_call: int = Field(description="The model call running or last made (from 1).")
    max_model_calls: int
    usage: TokenUsage = Field(description="Tokens of the calls answered so far.")
    tool_calls: int = Field(description="Tool calls made so far.")
    model: str | None = Field(default=None, description="The model that answered last.")
    attempt: int | None = Field(
        default=None, description="The attempt of a call now retrying (> 1), else None."
    )


class StepProgress(BaseModel):
    """Stepflow's own report to a pipeline about one of its running steps."""

    step: str
    attempt: int | None = Field(
        default=None, description="The attempt of the activity now running; > 1 means retrying."
    )
    model_call: int | None = Field(default=None, description="Agent steps: the call starting.")
    usage: TokenUsage | None = Field(default=None, description="Agent steps: tokens so far.")
    tool_calls: int | None = Field(default=None, description="Agent steps: tool calls so far.")
