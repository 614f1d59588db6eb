"""The durable contracts: the pipeline spec, step records, and activity inputs and outputs.

Workflows, activities and the client all import this module, and so do
payloads stored in Temporal's history. It does no I/O and imports cleanly
inside the workflow sandbox. Once a model has shipped, only add optional
fields: running workflows replay against these shapes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from stepflow.workflows.durations import PositiveDuration

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
PIPELINE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

DEFAULT_START_TO_CLOSE = timedelta(minutes=5)
"""Applies when neither the step nor the pipeline sets a start-to-close or schedule-to-close."""


class SpecModel(BaseModel):
    """Base of everything a user writes: unknown keys (typos) are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class RetrySpec(SpecModel):
    """How Temporal retries a step's activity.

    A field left out (None) is inherited: from the pipeline's `defaults`, then
    from the built-in default named in its description. None rather than the
    default itself, so that a step setting only `max_attempts` still gets the
    pipeline's intervals, also after the spec has travelled through history.
    """

    max_attempts: int | None = Field(
        default=None, ge=1, description="Attempts in all, the first included (default 3)."
    )
    initial_interval: PositiveDuration | None = Field(
        default=None, description="Wait before the first retry (default 1s)."
    )
    backoff_coefficient: float | None = Field(
        default=None, ge=1.0, description="Each retry waits this many times longer (default 2)."
    )
    max_interval: PositiveDuration | None = Field(
        default=None, description="Longest wait between retries (default 100 x initial)."
    )
    non_retryable_errors: list[str] | None = Field(
        default=None,
        description="Error type names (exception class names) that fail the step at once.",
    )


BUILTIN_RETRY = RetrySpec(
    max_attempts=3,
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    non_retryable_errors=[],
)


class TimeoutSpec(SpecModel):
    """Temporal's activity timeouts; a field left out (None) is inherited from the defaults."""

    start_to_close: PositiveDuration | None = Field(
        default=None, description="Longest a single attempt may run."
    )
    schedule_to_close: PositiveDuration | None = Field(
        default=None, description="Longest the step may take, all retries included."
    )
    heartbeat: PositiveDuration | None = Field(
        default=None, description="An attempt that does not heartbeat this often is retried."
    )


class Fallback(SpecModel):
    """`on_failure: {fallback: VALUE}`: the step's output becomes VALUE and dependents run."""

    fallback: Any


OnFailure = Literal["fail", "continue"] | Fallback
"""`fail` ends the pipeline, `continue` skips the step's dependents, a fallback stands in."""


class StepDefaults(SpecModel):
    """Pipeline-wide retry and timeout settings; a step overrides them field by field."""

    retry: RetrySpec = Field(default_factory=RetrySpec)
    timeout: TimeoutSpec = Field(default_factory=TimeoutSpec)


InputType = Literal["string", "integer", "number", "boolean", "object", "array", "any"]


class InputSpec(SpecModel):
    """A pipeline input. Without a `default` it is required."""

    type: InputType = "string"
    default: Any = None
    description: str | None = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


class StepBase(SpecModel):
    """What every kind of step has."""

    id: str = Field(pattern=STEP_ID_PATTERN, description="Unique within the pipeline.")
    description: str | None = None
    depends_on: list[str] = Field(
        default_factory=list, description="Steps that must succeed before this one starts."
    )
    on_failure: OnFailure = "fail"


class ActivityStepBase(StepBase):
    """Steps that run activities, and so have Temporal's retry and timeout settings."""

    retry: RetrySpec | None = None
    timeout: TimeoutSpec | None = None


class ToolStep(ActivityStepBase):
    """Calls one registered tool as one Temporal activity."""

    kind: Literal["tool"]
    tool: str = Field(description="Name of a registered tool.")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments; strings may hold {{ inputs.X }} or {{ steps.ID.output }}.",
    )


OutputSchema = dict[str, Any] | str
"""An inline JSON schema, or the import path of a pydantic model: `"package.module:Model"`."""


class AgentStep(ActivityStepBase):
    """A conversation with a model that may call tools, run as a child `AgentStepWorkflow`.

    Each model call and each tool call is its own activity. `retry` and
    `timeout` apply to both kinds of call; `model_retry`/`model_timeout` and
    `tool_retry`/`tool_timeout` override them for one kind, field by field.
    """

    kind: Literal["agent"]
    instructions: str = Field(description="The system prompt; may hold {{ inputs.X }}.")
    input: Any = Field(
        default=None,
        description="What the step works on: text or JSON, templated like a tool step's args.",
    )
    model: str | None = Field(
        default=None,
        description="A model name from the worker's configuration; absent: the worker's default.",
    )
    tools: list[str] = Field(
        default_factory=list, description="The only registered tools this step may call."
    )
    max_model_calls: int = Field(
        default=10, ge=1, le=1000, description="The step fails when it has made this many calls."
    )
    tool_calls: Literal["parallel", "sequential"] = Field(
        default="parallel", description="Run the tool calls of one model reply at once or in turn."
    )
    output_schema: OutputSchema | None = Field(
        default=None,
        description="The final answer must match it (JSON); absent means plain text.",
    )
    max_output_repairs: int = Field(
        default=2, ge=0, le=20, description="Invalid answers sent back to the model to fix."
    )
    model_retry: RetrySpec | None = None
    model_timeout: TimeoutSpec | None = None
    tool_retry: RetrySpec | None = None
    tool_timeout: TimeoutSpec | None = None


class ApprovalStep(StepBase):
    """Waits until someone approves or rejects (`stepflow approve|reject`, the `approve` update).

    Approval succeeds with `{"approved": true, "comment": ..., "by": "user"|"timeout"}`;
    rejection fails the step (type `Rejected`) and `on_failure` applies. The wait
    is durable: it survives worker restarts and may last for days.
    """

    kind: Literal["approval"]
    message: str | None = Field(
        default=None, description="What the approver is asked; may hold {{ ... }} references."
    )
    timeout: PositiveDuration | None = Field(
        default=None, description="How long to wait (a durable timer); absent: for ever."
    )
    on_timeout: Literal["approve", "reject", "fail"] | None = Field(
        default=None,
        description="When the timeout fires: approve, reject, or fail the step as TIMED_OUT "
        "(absent: fail).",
    )


class InputStep(StepBase):
    """Waits for a value someone gives (`stepflow input`, the `input` update); it is the output.

    The value must match `schema` (JSON Schema; absent: anything). On timeout
    the step is TIMED_OUT; `on_failure: {fallback: ...}` turns that into a default.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Literal["input"]
    message: str | None = Field(
        default=None, description="What the person is asked; may hold {{ ... }} references."
    )
    value_schema: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="JSON Schema of the value."
    )
    timeout: PositiveDuration | None = Field(
        default=None, description="How long to wait (a durable timer); absent: for ever."
    )


HumanStep = ApprovalStep | InputStep
"""Steps that wait for a person rather than run an activity."""

Step = Annotated[ToolStep | AgentStep | ApprovalStep | InputStep, Field(discriminator="kind")]

ContextMode = Literal["dependencies", "full"]
"""What an agent step sees besides its input: the outputs of the steps it declares
(`dependencies`, the default), or every earlier step's output and conversation (`full`,
the whole-history baseline that `bench/context.py` compares against)."""


class PipelineSpec(SpecModel):
    """A pipeline: a DAG of steps, written in YAML or built in Python."""

    name: str = Field(pattern=PIPELINE_NAME_PATTERN, description="Lowercase; starts run ids.")
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    max_concurrency: int = Field(default=10, ge=1, le=1000)
    context: ContextMode = "dependencies"
    defaults: StepDefaults = Field(default_factory=StepDefaults)
    steps: list[Step] = Field(min_length=1)

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def _layered(*layers: BaseModel | None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is not None:
            merged.update(
                {
                    k: getattr(layer, k)
                    for k in type(layer).model_fields
                    if getattr(layer, k) is not None
                }
            )
    return merged


def effective_retry(step: ActivityStepBase, defaults: StepDefaults) -> RetrySpec:
    """The step's retry settings over the pipeline's over the built-in ones, field by field."""
    return RetrySpec.model_validate(_layered(BUILTIN_RETRY, defaults.retry, step.retry))


def effective_timeout(
    step: ActivityStepBase, defaults: StepDefaults, override: TimeoutSpec | None = None
) -> TimeoutSpec:
    """The step's timeouts over the pipeline's, with a 5 minute start-to-close if none is set."""
    result = TimeoutSpec.model_validate(_layered(defaults.timeout, step.timeout, override))
    if result.start_to_close is None and result.schedule_to_close is None:
        result.start_to_close = DEFAULT_START_TO_CLOSE
    return result


BUILTIN_MODEL_RETRY = RetrySpec(max_attempts=5)
"""Model APIs rate-limit: their calls get two more attempts than tool calls by default."""

DEFAULT_MODEL_HEARTBEAT = timedelta(seconds=30)
"""The model activity heartbeats while it waits, so a lost worker's call is retried in 30 s."""


def model_call_retry(step: AgentStep, defaults: StepDefaults) -> RetrySpec:
    return RetrySpec.model_validate(
        _layered(BUILTIN_RETRY, BUILTIN_MODEL_RETRY, defaults.retry, step.retry, step.model_retry)
    )


def model_call_timeout(step: AgentStep, defaults: StepDefaults) -> TimeoutSpec:
    result = effective_timeout(step, defaults, step.model_timeout)
    if result.heartbeat is None:
        result.heartbeat = DEFAULT_MODEL_HEARTBEAT
    return result


def tool_call_retry(step: AgentStep, defaults: StepDefaults) -> RetrySpec:
    return RetrySpec.model_validate(
        _layered(BUILTIN_RETRY, defaults.retry, step.retry, step.tool_retry)
    )


def tool_call_timeout(step: AgentStep, defaults: StepDefaults) -> TimeoutSpec:
    return effective_timeout(step, defaults, step.tool_timeout)


# ---------------------------------------------------------------------------
# Run-time records


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    WAITING = "WAITING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"


class TokenUsage(BaseModel):
    """Tokens the model calls of a step (or a whole pipeline) used, as the model reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    model_calls: int = 0

    def plus(self, other: TokenUsage | None) -> TokenUsage:
        if other is None:
            return self
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            model_calls=self.model_calls + other.model_calls,
        )


class StepRecord(BaseModel):
    """What happened to one step."""

    id: str
    kind: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    reason: str | None = Field(default=None, description="Why the step was skipped or cancelled.")
    used_fallback: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None
    model: str | None = Field(
        default=None, description="Agent steps: the model that answered (`offline`: built-in)."
    )
    usage: TokenUsage | None = Field(default=None, description="Agent steps: tokens used.")
    tool_calls: int | None = Field(default=None, description="Agent steps: tool calls made.")
    model_call: int | None = Field(
        default=None, description="Agent steps: the number of the model call running or last made."
    )
    max_model_calls: int | None = Field(default=None, description="Agent steps: the step's limit.")
    waiting_for: Literal["approval", "input"] | None = Field(
        default=None, description="Approval and input steps: what the step waits for."
    )
    message: str | None = Field(
        default=None, description="Approval and input steps: what the person is asked (rendered)."
    )
    comment: str | None = Field(
        default=None, description="The comment given with an approval, rejection or cancel."
    )

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


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


class PipelineCarry(BaseModel):
    """What a pipeline run hands the next run of its chain when it continues as new.

    Steps still PENDING have no record here (the next run makes them afresh);
    outputs are the records' own. Approval and input steps that were WAITING go
    on waiting in the next run, until `started_at` plus their timeout.
    """

    started_at: datetime = Field(description="When the first run of the chain started.")
    records: list[StepRecord] = Field(description="Every step that is no longer PENDING.")
    transcripts: list[ChatMessage] = Field(
        default_factory=list, description="`context: full` only: the conversations so far."
    )
    paused: bool = False
    cancel_requests: dict[str, str | None] = Field(
        default_factory=dict, description="Steps someone asked to cancel, with their comment."
    )
    answers: dict[str, tuple[str, Any]] = Field(
        default_factory=dict, description="Answers given to waiting steps, not yet taken up."
    )
    runs: int = Field(default=1, description="Runs of the chain before the one this starts.")

    @field_serializer("records")
    def _compact(self, records: list[StepRecord]) -> list[dict[str, Any]]:
        # Fields left at their defaults are most of a record: thousands of steps must fit.
        return [r.model_dump(mode="json", exclude_defaults=True) for r in records]


class PipelineInput(BaseModel):
    """What a pipeline run starts with: the spec itself and the values of its inputs."""

    spec: PipelineSpec
    inputs: dict[str, Any] = Field(default_factory=dict)
    routing: TaskRouting | None = Field(
        default=None, description="Task queues for model calls and tools; None: the run's queue."
    )
    carried: PipelineCarry | None = Field(
        default=None, description="Set by the run before, when this run continues its work."
    )
    payload_store: bool = Field(
        default=False,
        description="The client's workers keep large payloads outside history (set by the "
        "client from STEPFLOW_PAYLOAD_STORE): a run may then hand over more than 2 MB.",
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

    def step(self, step_id: str) -> StepRecord:
        for record in self.steps:
            if record.id == step_id:
                return record
        raise KeyError(step_id)

    def output(self, step_id: str) -> Any:
        """The output of a step (None if it produced none)."""
        return self.step(step_id).output


# ---------------------------------------------------------------------------
# Activity contracts


class ToolCallInput(BaseModel):
    """One call of a tool activity. The key is the same on every retry of the call."""

    step_id: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    report_to: str | None = Field(
        default=None,
        description="The pipeline to tell about retries; absent: the workflow that called.",
    )


class ToolCallOutput(BaseModel):
    output: Any = None
    attempt: int = Field(description="The attempt that produced this output (1 = first).")


def tool_activity_name(tool: str) -> str:
    """Each tool is its own activity type, so the Web UI and metrics name the tool."""
    return f"tool_{tool}"


ChatMessage = dict[str, Any]
"""One Chat Completions message as the API spells it (`role`, `content`, `tool_calls`...)."""


class ModelCallInput(BaseModel):
    """One call of the `model_call` activity: the conversation so far, nothing else.

    Tools go by name: the worker's registry supplies their schemas, so history
    holds each schema once per worker build rather than once per call.
    """

    step_id: str
    model: str | None = Field(default=None, description="A configured model name, or default.")
    messages: list[ChatMessage]
    tools: list[str] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    output_schema: OutputSchema | None = None
    call_number: int = Field(default=1, description="1 for the step's first model call.")
    report_to: str | None = Field(
        default=None, description="The pipeline to tell about retries (agent steps' parent)."
    )


class PlannedToolCall(BaseModel):
    """A tool call the model asked for, checked by the activity before anything runs it."""

    id: str
    name: str
    arguments: dict[str, Any] | None = Field(
        default=None, description="Parsed and valid against the tool's schema."
    )
    error: str | None = Field(
        default=None,
        description="Why the call must not run; it goes back to the model as the call's result.",
    )


class ModelCallOutput(BaseModel):
    message: ChatMessage = Field(description="The assistant message, to append to the chat.")
    tool_calls: list[PlannedToolCall] = Field(default_factory=list)
    output: Any = Field(default=None, description="The final answer (parsed JSON with a schema).")
    output_error: str | None = Field(
        default=None, description="Why the final answer does not match the output schema."
    )
    usage: TokenUsage = Field(default_factory=TokenUsage)
    model: str = Field(description="The model that answered; `offline` for the built-in one.")
    attempt: int = 1

    @property
    def is_final(self) -> bool:
        return not self.tool_calls


class AgentCarry(BaseModel):
    """Where an agent step's loop stands when its workflow continues as new.

    The conversation replaces `history`, `context` and `input`, which the
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
    carried: AgentCarry | None = Field(
        default=None, description="Set by the run before, when this run continues the loop."
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


MODEL_CALL_ACTIVITY = "model_call"
AGENT_STEP_WORKFLOW = "stepflow_agent_step"
OFFLINE_MODEL = "offline"
