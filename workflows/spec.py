"""The pipeline spec: what a user writes (YAML or Python), step kind by step kind.

Durable contracts like the rest of `models` (which re-exports every name here):
a run's input carries its spec. Pure models: imported in the workflow sandbox.
Unknown keys are errors, so a typo never passes silently. The settings steps are
given (retry, timeouts, cache, budget, model fallback, inputs) are in `spec_settings`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from stepflow.workflows.durations import PositiveDuration
from stepflow.workflows.spec_settings import BUILTIN_RETRY as BUILTIN_RETRY
from stepflow.workflows.spec_settings import DEFAULT_START_TO_CLOSE as DEFAULT_START_TO_CLOSE
from stepflow.workflows.spec_settings import BudgetSpec as BudgetSpec
from stepflow.workflows.spec_settings import CacheSpec as CacheSpec
from stepflow.workflows.spec_settings import Fallback as Fallback
from stepflow.workflows.spec_settings import InputSpec as InputSpec
from stepflow.workflows.spec_settings import InputType as InputType
from stepflow.workflows.spec_settings import ModelChoice as ModelChoice
from stepflow.workflows.spec_settings import ModelFallback as ModelFallback
from stepflow.workflows.spec_settings import OnFailure as OnFailure
from stepflow.workflows.spec_settings import RetrySpec as RetrySpec
from stepflow.workflows.spec_settings import SpecModel as SpecModel
from stepflow.workflows.spec_settings import StepCache as StepCache
from stepflow.workflows.spec_settings import StepDefaults as StepDefaults
from stepflow.workflows.spec_settings import TimeoutSpec as TimeoutSpec

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
PIPELINE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

Trigger = Literal["all_succeeded", "none_failed", "all_done", "one_succeeded"]
"""When a step may start once its dependencies have settled (see `StepBase.trigger`)."""


class StepBase(SpecModel):
    """What every kind of step has."""

    id: str = Field(pattern=STEP_ID_PATTERN, description="Unique within the pipeline.")
    description: str | None = Field(default=None, description="What the step does.")
    depends_on: list[str] = Field(
        default_factory=list, description="Steps that must succeed before this one starts."
    )
    on_failure: OnFailure = Field(
        default="fail",
        description="When the step fails for good: `fail` the pipeline, `continue` (its "
        "dependents are skipped), or `{fallback: VALUE}` to succeed with VALUE.",
    )
    when: str | None = Field(
        default=None,
        description="A condition (Jinja2 expression over `inputs`, `steps` it depends on, "
        "`item`, `index`, `loop`): when false the step is SKIPPED, reason `condition false`.",
    )
    trigger: Trigger = Field(
        default="all_succeeded",
        description="When the step may start once its dependencies settled: `all_succeeded`, "
        "`none_failed` (skipped ones read as null), `all_done` (whatever happened), "
        "`one_succeeded`.",
    )


class ForEachFields(SpecModel):
    """Tool, agent and pipeline steps may run once per item of a list known only at run time."""

    for_each: str | None = Field(
        default=None,
        description="A template yielding a list, e.g. `{{ steps.plan.output.aspects }}`: one "
        "instance per item (`item`, `index` inside); the output is their outputs, in order.",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="for_each: instances running at once (default: the pipeline's).",
    )
    item_failure: Literal["fail", "continue"] = Field(
        default="fail",
        description="for_each: a failed instance fails the step (`fail`), or its error takes "
        "its place in the output and the rest go on (`continue`).",
    )


class ActivityStepBase(StepBase):
    """Steps that run activities, and so have Temporal's retry and timeout settings."""

    retry: RetrySpec | None = Field(
        default=None, description="How Temporal retries the step's activities (over `defaults`)."
    )
    timeout: TimeoutSpec | None = Field(
        default=None, description="The step's activity timeouts (over `defaults`)."
    )


class ToolStep(ActivityStepBase, ForEachFields):
    """Calls one registered tool as one Temporal activity."""

    kind: Literal["tool"] = Field(description="The kind of step.")
    tool: str = Field(description="Name of a registered tool.")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments; strings may hold {{ inputs.X }} or {{ steps.ID.output }}.",
    )
    cache: StepCache | None = Field(
        default=None,
        description="Keep the result across runs (`{ttl: 7d}`), or `false` to never look.",
    )


OutputSchema = dict[str, Any] | str
"""An inline JSON schema, or the import path of a pydantic model: `"package.module:Model"`."""


MAX_INLINE_MODEL_CALLS = 50
"""An inline agent step's `max_model_calls`, at most: its calls go into the pipeline's history,
which does not continue as new while a step runs (an agent child does, between calls). Fifty
turns of a few KB each stay well inside the 10,240 events and 50 MB Temporal allows a history."""


class AgentStep(ActivityStepBase, ForEachFields):
    """A conversation with a model that may call tools, run as a child `AgentStepWorkflow`.

    Each model call and each tool call is its own activity. `retry` and
    `timeout` apply to both kinds of call; `model_retry`/`model_timeout` and
    `tool_retry`/`tool_timeout` override them for one kind, field by field.
    """

    kind: Literal["agent"] = Field(description="The kind of step.")
    instructions: str = Field(description="The system prompt; may hold {{ inputs.X }}.")
    input: Any = Field(
        default=None,
        description="What the step works on: text or JSON, templated like a tool step's args.",
    )
    model: ModelChoice | None = Field(
        default=None,
        description="A model name from the worker's configuration (absent: the worker's "
        "default), or a chain `[primary, backup]` whose next model takes over on failure.",
    )
    model_fallback: ModelFallback | None = Field(
        default=None, description="With a chain: when the next model takes over (default 2)."
    )
    budget: BudgetSpec | None = Field(
        default=None, description="What this step's model calls may spend (each for_each item)."
    )
    tools: list[str] = Field(
        default_factory=list, description="The only registered tools this step may call."
    )
    local_tools: list[str] = Field(
        default_factory=list,
        description="Of `tools`, the short ones (well under the worker's workflow task timeout, "
        "10 s) to run as local activities: a turn without a round trip through the server. A "
        "worker that dies before the turn is recorded runs such a call again.",
    )
    max_model_calls: int = Field(
        default=10, ge=1, le=1000, description="The step fails when it has made this many calls."
    )
    inline: bool = Field(
        default=False,
        description="Run the loop in the pipeline's own workflow, not a child workflow: fewer "
        "workflow tasks and round trips per step. Its model and tool calls go into the "
        "pipeline's history, which never continues as new mid-step, and the Web UI shows no "
        "child for it: keep it for short agents "
        f"(max_model_calls at most {MAX_INLINE_MODEL_CALLS}).",
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
    max_conversation_bytes: int | None = Field(
        default=None,
        ge=1,
        description="The step fails (`ConversationTooLarge`) before a call whose conversation "
        "is larger; default: about 4 bytes a token of the model's `context_tokens`, if set.",
    )
    cache: StepCache | None = Field(
        default=None,
        description="Keep the final answer across runs (`{ttl: 7d}`), or `false` to never look.",
    )
    model_retry: RetrySpec | None = None
    model_timeout: TimeoutSpec | None = None
    tool_retry: RetrySpec | None = None
    tool_timeout: TimeoutSpec | None = None


PlannedKind = Literal["agent", "tool"]
"""Step kinds a plan may hold."""

PLANNED_KINDS: tuple[PlannedKind, ...] = ("agent", "tool")


class PlanAllow(SpecModel):
    """What a plan may use: checked with the rest of the plan before anything of it runs."""

    tools: list[str] = Field(
        default_factory=list,
        description="The registered tools the plan's tool steps may call and its agent steps "
        "may be given; nothing else.",
    )
    kinds: list[PlannedKind] = Field(
        default_factory=lambda: list(PLANNED_KINDS), description="Step kinds the plan may use."
    )
    max_steps: int = Field(default=12, ge=1, le=100, description="Steps in the plan, at most.")
    models: list[str] = Field(
        default_factory=list,
        description="Models the plan's agent steps may name; absent: they name none (and use "
        "the worker's default).",
    )


class PlanApproval(SpecModel):
    """`approve: {timeout: 1d, on_timeout: reject}`: a person approves the plan before it runs."""

    message: str | None = Field(default=None, description="What the approver is asked.")
    timeout: PositiveDuration | None = Field(
        default=None, description="How long to wait (a durable timer); absent: for ever."
    )
    on_timeout: Literal["approve", "reject", "fail"] | None = Field(
        default=None, description="When the timeout fires (absent: fail, TIMED_OUT)."
    )


class PlanStep(ActivityStepBase):
    """A model turns a request into a plan, a pipeline fragment that is checked, then run.

    The model answers with `steps` (and optional `outputs`) as structured output;
    the plan is checked like a pipeline file plus `allow`; an invalid one goes back
    to the model with the errors, at most `max_plan_repairs` times (then the step
    fails `PlanInvalid`). A valid plan runs as a child pipeline run with the
    rendered `input` as `inputs.request`; the step's output is the child's outputs.
    """

    kind: Literal["plan"] = Field(description="The kind of step.")
    instructions: str = Field(description="What to plan; may hold {{ ... }} references.")
    input: Any = Field(
        default=None, description="The request, templated; the plan sees it as inputs.request."
    )
    model: ModelChoice | None = Field(
        default=None, description="The planner's model, or a chain (as on agent steps)."
    )
    model_fallback: ModelFallback | None = Field(
        default=None, description="With a chain: when the next model takes over."
    )
    allow: PlanAllow = Field(
        default_factory=PlanAllow, description="All the plan may use: tools, kinds, steps."
    )
    max_plan_repairs: int = Field(
        default=2, ge=0, le=20, description="Invalid plans sent back to the model to fix."
    )
    approve: bool | PlanApproval = Field(
        default=False,
        description="Wait for a person to approve the plan (`stepflow approve RUN STEP`) before "
        "it runs; `reject` fails the step.",
    )
    budget: BudgetSpec | None = Field(
        default=None, description="What the planner's model calls may spend."
    )


class ApprovalStep(StepBase):
    """Waits until someone approves or rejects (`stepflow approve|reject`, the `approve` update).

    Approval succeeds with `{"approved": true, "comment": ..., "by": "user"|"timeout"}`;
    rejection fails the step (type `Rejected`) and `on_failure` applies. The wait
    is durable: it survives worker restarts and may last for days.
    """

    kind: Literal["approval"] = Field(description="The kind of step.")
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

    kind: Literal["input"] = Field(description="The kind of step.")
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


class LoopStep(StepBase):
    """Runs its body (`steps`) once per iteration, each a child pipeline run, until `until`.

    Inside the body `loop.iteration` counts from 1 and `loop.previous.ID.output`
    reads the previous iteration's outputs (null on the first). The output is
    the last iteration's step outputs, by step id.
    """

    kind: Literal["loop"] = Field(description="The kind of step.")
    max_iterations: int = Field(ge=1, le=100, description="Iterations at most (required).")
    until: str | None = Field(
        default=None,
        description="Checked after each iteration over its `steps` (and `loop`, `inputs`): "
        "true ends the loop. Absent: exactly `max_iterations` iterations.",
    )
    on_exhausted: Literal["fail", "last"] = Field(
        default="fail",
        description="`until` still false after `max_iterations`: fail (`LoopExhausted`), or "
        "succeed with the last iteration (`last`).",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Body steps running at once (default: the pipeline's).",
    )
    steps: list[Step] = Field(
        min_length=1,
        description="The body: steps as in a pipeline; they may also read the outputs of the "
        "loop step's own dependencies.",
    )


class PipelineStep(StepBase, ForEachFields):
    """Runs another pipeline as a child pipeline run; its output is the child's `outputs`.

    `pipeline:` names a file (relative to this one), which the client reads when it
    validates and starts the run, so the spec that starts holds it inline; or `steps:`
    gives the child's steps inline.
    """

    kind: Literal["pipeline"] = Field(description="The kind of step.")
    pipeline: str | PipelineSpec | None = Field(
        default=None,
        description="The child pipeline: a path relative to this file (read by the client), "
        "or its spec inline.",
    )
    steps: list[Step] | None = Field(
        default=None, description="Instead of `pipeline`: the child's steps inline."
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description="The child's inputs, templated; checked against what it declares.",
    )


Step = Annotated[
    ToolStep | AgentStep | ApprovalStep | InputStep | LoopStep | PipelineStep | PlanStep,
    Field(discriminator="kind"),
]

ContextMode = Literal["dependencies", "full"]
"""What an agent step sees besides its input: the outputs of the steps it declares
(`dependencies`, the default), or every earlier step's output and conversation (`full`,
the whole-history baseline that `bench/context.py` compares against)."""


class PipelineSpec(SpecModel):
    """A pipeline: a DAG of steps, written in YAML or built in Python."""

    name: str = Field(pattern=PIPELINE_NAME_PATTERN, description="Lowercase; starts run ids.")
    description: str | None = Field(
        default=None, description="What the pipeline does; shown in the Web UI and listings."
    )
    inputs: dict[str, InputSpec] = Field(
        default_factory=dict,
        description="Named values a run starts with (`--input NAME=VALUE`), used as "
        "{{ inputs.NAME }}.",
    )
    max_concurrency: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Steps running at once; approval and input steps take no slot.",
    )
    context: ContextMode = Field(
        default="dependencies",
        description="What an agent step sees: the outputs of the steps it depends on "
        "(`dependencies`), or every earlier output and conversation (`full`).",
    )
    defaults: StepDefaults = Field(
        default_factory=StepDefaults,
        description="Retry and timeout settings every step inherits, field by field.",
    )
    budget: BudgetSpec | None = Field(
        default=None,
        description="What the run's model calls may spend in all: every agent and plan step, "
        "in loops, for_each instances and sub-pipelines too.",
    )
    steps: list[Step] = Field(
        min_length=1, description="The steps; each starts once the steps it depends on succeed."
    )
    outputs: dict[str, Any] | None = Field(
        default=None,
        description="What the pipeline returns, by name: templates over `steps` and `inputs` "
        "(`PipelineResult.outputs`; a sub-pipeline step's output).",
    )

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


LoopStep.model_rebuild()
PipelineStep.model_rebuild()
PipelineSpec.model_rebuild()
