"""What Stepflow's activities take and give: tool and model calls, the result cache, ledgers.

Durable like every contract (`workflows.models` re-exports each name): payloads of
these shapes are in running workflows' histories, so once shipped a model only
gains optional fields. No I/O; passed through the workflow sandbox.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from stepflow.workflows.records import ChatMessage, TokenUsage
from stepflow.workflows.spec import BudgetSpec, OutputSchema, PlanAllow


class BudgetLedger(BaseModel):
    """The budget of a pipeline run, and where what its model calls (and its children's)
    have spent is kept.

    A run whose spec has a `budget` has its own ledger, a workflow of its own
    (`workflows.budget.BudgetLedgerWorkflow`, id `<workflow_id>.budget`), and hands it,
    with its parent's, to every child; each model call checks every ledger of its run
    before it starts and adds what it spent after (`activities.budget`).
    """

    workflow_id: str = Field(description="The budgeted pipeline run (its chain's workflow id).")
    budget: BudgetSpec
    task_queue: str | None = Field(
        default=None,
        description="The run's task queue, served by workflow workers: where the first "
        "charge starts the ledger workflow (None: the model call's own queue).",
    )


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
    prior: str | None = Field(
        default=None,
        description="The key of the conversation so far, which an earlier call stored "
        "(`activities.conversation_store`); then `messages` is empty and `tail` holds the "
        "messages added since. Empty `messages` make a worker that predates this fail loudly.",
    )
    tail: list[ChatMessage] | None = Field(
        default=None, description="With `prior`: the messages added since it was stored."
    )
    max_conversation_bytes: int | None = Field(
        default=None, description="The step's bound on the whole conversation (JSON bytes)."
    )
    plan: PlanAllow | None = Field(
        default=None,
        description="A plan step's call: the final answer must be a plan within these limits "
        "(`activities.plan_check`), instead of matching `output_schema`.",
    )
    budgets: list[BudgetLedger] = Field(
        default_factory=list,
        description="Ledgers of the run to check before the call and charge after it.",
    )
    charge_id: str | None = Field(
        default=None,
        description="Names this call in the ledgers, so that a retried charge counts once.",
    )
    cost_budget: bool = Field(
        default=False,
        description="A budget with `cost` applies (the run's or the step's): a model without "
        "a price in the worker's configuration fails the call (`ModelUnpriced`).",
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
    stored: str | None = Field(
        default=None,
        description="The key of the conversation this call was given, now stored: the next "
        "call names it instead of sending it again. None: the worker keeps none.",
    )

    @property
    def is_final(self) -> bool:
        return not self.tool_calls


class CacheLookup(BaseModel):
    """Is a fresh result kept for what determines this step's result?"""

    step_id: str
    kind: str = Field(description="`tool` or `agent`: the worker adds what it alone knows.")
    material: dict[str, Any] = Field(description="What determines the result; hashed, not kept.")
    ttl: timedelta
    refresh: bool = Field(
        default=False, description="`--no-cache`: only the key; the result is computed afresh."
    )


class CacheAnswer(BaseModel):
    key: str = Field(description="The entry's key, for storing the result on a miss.")
    hit: bool
    output: Any = None
    source_run: str | None = None
    stored_at: datetime | None = None


class CacheStore(BaseModel):
    """Keep a step's result under `key` until `ttl` from now."""

    step_id: str
    key: str
    output: Any
    source_run: str
    ttl: timedelta
