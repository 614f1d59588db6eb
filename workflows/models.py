"""The durable contracts: the pipeline spec, step records, and activity inputs and outputs.

The spec itself is in `spec`, step records in `records`, a run's state in
`run_state`, what activities take and give in `activity_contracts`; every name of
theirs is importable from here too.

Workflows, activities and the client all import this module, and so do
payloads stored in Temporal's history. It does no I/O and imports cleanly
inside the workflow sandbox. Once a model has shipped, only add optional
fields: running workflows replay against these shapes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from stepflow.workflows.activity_contracts import BudgetLedger as BudgetLedger
from stepflow.workflows.activity_contracts import CacheAnswer as CacheAnswer
from stepflow.workflows.activity_contracts import CacheLookup as CacheLookup
from stepflow.workflows.activity_contracts import CacheStore as CacheStore
from stepflow.workflows.activity_contracts import ModelCallInput as ModelCallInput
from stepflow.workflows.activity_contracts import ModelCallOutput as ModelCallOutput
from stepflow.workflows.activity_contracts import PlannedToolCall as PlannedToolCall
from stepflow.workflows.activity_contracts import ToolCallInput as ToolCallInput
from stepflow.workflows.activity_contracts import ToolCallOutput as ToolCallOutput
from stepflow.workflows.activity_contracts import tool_activity_name as tool_activity_name
from stepflow.workflows.records import WITH_OUTPUT as WITH_OUTPUT
from stepflow.workflows.records import ChatMessage as ChatMessage
from stepflow.workflows.records import PassedOver as PassedOver
from stepflow.workflows.records import StepRecord as StepRecord
from stepflow.workflows.records import StepStatus as StepStatus
from stepflow.workflows.records import TokenUsage as TokenUsage
from stepflow.workflows.records import UsageByModel as UsageByModel
from stepflow.workflows.records import add_by_model as add_by_model
from stepflow.workflows.run_state import RunState
from stepflow.workflows.spec import BUILTIN_RETRY as BUILTIN_RETRY
from stepflow.workflows.spec import DEFAULT_START_TO_CLOSE as DEFAULT_START_TO_CLOSE
from stepflow.workflows.spec import PIPELINE_NAME_PATTERN as PIPELINE_NAME_PATTERN
from stepflow.workflows.spec import STEP_ID_PATTERN as STEP_ID_PATTERN
from stepflow.workflows.spec import ActivityStepBase as ActivityStepBase
from stepflow.workflows.spec import AgentStep as AgentStep
from stepflow.workflows.spec import ApprovalStep as ApprovalStep
from stepflow.workflows.spec import BudgetSpec as BudgetSpec
from stepflow.workflows.spec import CacheSpec as CacheSpec
from stepflow.workflows.spec import ContextMode as ContextMode
from stepflow.workflows.spec import Fallback as Fallback
from stepflow.workflows.spec import ForEachFields as ForEachFields
from stepflow.workflows.spec import HumanStep as HumanStep
from stepflow.workflows.spec import InputSpec as InputSpec
from stepflow.workflows.spec import InputStep as InputStep
from stepflow.workflows.spec import InputType as InputType
from stepflow.workflows.spec import LoopStep as LoopStep
from stepflow.workflows.spec import ModelChoice as ModelChoice
from stepflow.workflows.spec import ModelFallback as ModelFallback
from stepflow.workflows.spec import OnFailure as OnFailure
from stepflow.workflows.spec import OutputSchema as OutputSchema
from stepflow.workflows.spec import PipelineSpec as PipelineSpec
from stepflow.workflows.spec import PipelineStep as PipelineStep
from stepflow.workflows.spec import PlanAllow as PlanAllow
from stepflow.workflows.spec import PlanApproval as PlanApproval
from stepflow.workflows.spec import PlannedKind as PlannedKind
from stepflow.workflows.spec import PlanStep as PlanStep
from stepflow.workflows.spec import RetrySpec as RetrySpec
from stepflow.workflows.spec import SpecModel as SpecModel
from stepflow.workflows.spec import Step as Step
from stepflow.workflows.spec import StepBase as StepBase
from stepflow.workflows.spec import StepDefaults as StepDefaults
from stepflow.workflows.spec import TimeoutSpec as TimeoutSpec
from stepflow.workflows.spec import ToolStep as ToolStep
from stepflow.workflows.step_settings import BUILTIN_MODEL_RETRY as BUILTIN_MODEL_RETRY
from stepflow.workflows.step_settings import DEFAULT_MODEL_HEARTBEAT as DEFAULT_MODEL_HEARTBEAT
from stepflow.workflows.step_settings import effective_cache as effective_cache
from stepflow.workflows.step_settings import effective_retry as effective_retry
from stepflow.workflows.step_settings import effective_timeout as effective_timeout
from stepflow.workflows.step_settings import model_call_retry as model_call_retry
from stepflow.workflows.step_settings import model_call_timeout as model_call_timeout
from stepflow.workflows.step_settings import tool_call_retry as tool_call_retry
from stepflow.workflows.step_settings import tool_call_timeout as tool_call_timeout

# ---------------------------------------------------------------------------
# Run-time records


class PipelineStatus(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class TaskRouting(BaseModel):
    """Which task queues a run's activities go to, so model calls and heavy tools scale apart.

    Set by the client from the worker settings it shares (`STEPFLOW_MODEL_TASK_QUEUE`,
    `STEPFLOW_TOOL_TASK_QUEUES`); unset or a missing tool means the workflow's own queue.
    """

    model_task_queue: str | None = Field(
        default=None, description="Queue for `model_call` activities; default: the run's queue."
    )
    tool_task_queues: dict[str, str] = Field(
        default_factory=dict, description="Queue per tool name; tools not listed: the run's queue."
    )


def model_call_queue(routing: TaskRouting | None) -> dict[str, Any]:
    """`task_queue=` for a model call, only when routed: unrouted runs schedule what they did."""
    queue = routing.model_task_queue if routing else None
    return {"task_queue": queue} if queue else {}


def tool_call_queue(routing: TaskRouting | None, tool: str) -> dict[str, Any]:
    """`task_queue=` for a call of `tool`, only when routed."""
    queue = routing.tool_task_queues.get(tool) if routing else None
    return {"task_queue": queue} if queue else {}


class BudgetSpent(BaseModel):
    """A budget and what was spent against it."""

    budget: BudgetSpec
    spent: TokenUsage = Field(default_factory=TokenUsage)
    exceeded: bool = Field(default=False, description="A model call was refused for it.")


PipelineCarry = RunState
"""The name continue-as-new's state had before `RunState`; the JSON is the same."""


class Reuse(BaseModel):
    """A rerun: the steps it takes over from an earlier run instead of running them again."""

    source: str = Field(description="The workflow id of the run whose outputs are reused.")
    records: list[StepRecord] = Field(
        default_factory=list, description="The steps taken over, as they ended there."
    )
    inside: dict[str, NestedReuse] = Field(
        default_factory=dict,
        description="Loop and pipeline steps rerun from a step inside them: what their child "
        "run takes over.",
    )


class NestedReuse(BaseModel):
    """What a loop or pipeline step rerun from a step inside it takes over."""

    iteration: int | None = Field(
        default=None, description="A loop: the iteration it starts at (earlier ones stand)."
    )
    previous: dict[str, Any] | None = Field(
        default=None, description="A loop: `loop.previous` for that iteration."
    )
    reuse: Reuse = Field(description="What that iteration's or the sub-pipeline's run reuses.")


class RunScope(BaseModel):
    """What a child pipeline run (a loop iteration, a for_each batch) sees of its parent.

    A sub-pipeline (`kind: pipeline`) gets none: it sees only its own inputs.
    """

    outputs: dict[str, Any] = Field(
        default_factory=dict,
        description="Outputs of the parent's steps the child's steps may read as `steps.ID`.",
    )
    skipped: list[str] = Field(
        default_factory=list, description="Those of them that did not succeed (they read as null)."
    )
    loop: dict[str, Any] | None = Field(
        default=None, description="`loop` in templates: {iteration, max_iterations, previous}."
    )
    items: list[Any] | None = Field(
        default=None, description="A for_each batch: the items its one step runs, from `offset`."
    )
    offset: int = Field(default=0, description="The index of the batch's first item.")


Reuse.model_rebuild()


class PipelineInput(BaseModel):
    """What a pipeline run starts with: the spec itself and the values of its inputs."""

    spec: PipelineSpec
    inputs: dict[str, Any] = Field(default_factory=dict)
    routing: TaskRouting | None = Field(
        default=None, description="Task queues for model calls and tools; None: the run's queue."
    )
    carried: RunState | None = Field(
        default=None, description="Set by the run before, when this run continues its work."
    )
    payload_store: bool = Field(
        default=False,
        description="The client's workers keep large payloads outside history (set by the "
        "client from STEPFLOW_PAYLOAD_STORE): a run may then hand over more than 2 MB.",
    )
    scope: RunScope | None = Field(
        default=None, description="Set when a pipeline run starts this one as a child."
    )
    reuse: Reuse | None = Field(
        default=None, description="A rerun: the steps it takes over from the run it reruns."
    )
    no_cache: bool = Field(
        default=False,
        description="`stepflow run --no-cache`: steps compute afresh, and keep the result.",
    )
    budgets: list[BudgetLedger] = Field(
        default_factory=list,
        description="Set when a pipeline run starts this one as a child: the ledgers of the "
        "runs above it that have a budget.",
    )


class PipelineResult(BaseModel):
    """The outcome of a run: every step's record, in spec order."""

    pipeline: str
    status: PipelineStatus
    steps: list[StepRecord]
    error: str | None = Field(default=None, description="Why the pipeline failed.")
    started_at: datetime
    ended_at: datetime
    usage: TokenUsage = Field(
        default_factory=TokenUsage, description="Tokens of every agent step, summed."
    )
    outputs: dict[str, Any] | None = Field(
        default=None, description="The pipeline's declared `outputs`, rendered at its end."
    )
    rerun_of: str | None = Field(
        default=None, description="A rerun: the workflow id of the run it reran."
    )
    usage_by_model: UsageByModel = Field(
        default_factory=dict, description="Tokens and cost of every agent step, per model."
    )
    budget: BudgetSpent | None = Field(
        default=None, description="The run's `budget` and what it spent (children included)."
    )

    def step(self, step_id: str) -> StepRecord:
        for record in self.steps:
            if record.id == step_id:
                return record
        raise KeyError(step_id)

    def output(self, step_id: str) -> Any:
        """The output of a step (None if it produced none)."""
        return self.step(step_id).output


class AgentLoopState(BaseModel):
    """Where an agent step's loop stands: the workflow's live state, and what it carries.

    When the workflow continues as new it hands this over whole. The
    conversation replaces `history`, `context` and `input`, which the
    continuing run's input leaves empty: they are in its first messages.
    """

    messages: list[ChatMessage]
    next_call: int = Field(description="The number of the model call to make next.")
    transcript_start: int = Field(description="Where this step's own messages begin.")
    usage: TokenUsage = Field(default_factory=TokenUsage)
    model: str | None = None
    tool_calls: int = 0
    repairs: int = 0
    runs: int = Field(default=1, description="Runs of the step's chain before the one this starts.")
    stored: str | None = Field(
        default=None,
        description="The key of the conversation stored so far (see `ModelCallInput`).",
    )
    stored_count: int = Field(default=0, description="Messages that stored conversation holds.")
    offset: int = Field(
        default=0,
        description="The number of the first message in `messages`: a run that continued as new "
        "leaves the stored ones behind.",
    )
    usage_by_model: UsageByModel = Field(
        default_factory=dict, description="Tokens and cost per model that answered."
    )
    passed_over: list[PassedOver] = Field(
        default_factory=list, description="With a model chain: models that did not answer."
    )
    chain_at: int = Field(
        default=0, description="With a model chain: the position of the model calls start with."
    )


AgentCarry = AgentLoopState
"""The name the carried loop state had before; the JSON is the same."""


class AgentStepInput(BaseModel):
    """What `AgentStepWorkflow` starts with; the pipeline resolves every setting first."""

    pipeline: str
    step: AgentStep
    instructions: str = Field(description="Rendered.")
    input: Any = Field(default=None, description="Rendered.")
    context: dict[str, Any] = Field(
        default_factory=dict, description="Outputs of the steps this one may see, by step id."
    )
    history: list[ChatMessage] = Field(
        default_factory=list, description="`context: full` only: earlier steps' conversations."
    )
    keep_transcript: bool = False
    model_retry: RetrySpec
    model_timeout: TimeoutSpec
    tool_retry: RetrySpec
    tool_timeout: TimeoutSpec
    idempotency_prefix: str = Field(description="Tool calls' keys start with it.")
    routing: TaskRouting | None = Field(
        default=None, description="The pipeline's task routing, for model and tool calls."
    )
    carried: AgentLoopState | None = Field(
        default=None, description="Set by the run before, when this run continues the loop."
    )
    budgets: list[BudgetLedger] = Field(
        default_factory=list, description="Ledgers of the pipeline runs with a budget above it."
    )
    plan: PlanAllow | None = Field(
        default=None, description="A plan step: the final answer is a plan within these limits."
    )


class AgentStepResult(BaseModel):
    output: Any = None
    model: str
    usage: TokenUsage
    tool_calls: int = 0
    repairs: int = 0
    transcript: list[ChatMessage] | None = Field(
        default=None, description="The conversation, when the pipeline keeps full context."
    )
    usage_by_model: UsageByModel | None = Field(
        default=None, description="Tokens and cost per model that answered."
    )
    passed_over: list[PassedOver] | None = Field(
        default=None, description="With a model chain: models that did not answer, and why."
    )


CACHE_LOOKUP_ACTIVITY = "stepflow_cache_lookup"
CACHE_STORE_ACTIVITY = "stepflow_cache_store"
MODEL_CALL_ACTIVITY = "model_call"
AGENT_STEP_WORKFLOW = "stepflow_agent_step"
OFFLINE_MODEL = "offline"
