"""What every step runner gets and gives: `StepContext` in, an output out, `StepFailure` else.

A step kind is one module of this package with a runner behind `StepRunner`,
and one line in the registry (`steps.RUNNERS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from temporalio import workflow

from stepflow.workflows.activity_options import activity_options
from stepflow.workflows.errors import ErrorType, StepFailure
from stepflow.workflows.expressions import ExpressionError, is_true
from stepflow.workflows.models import (
    WITH_OUTPUT,
    AgentStep,
    ApprovalStep,
    BudgetLedger,
    InputStep,
    LoopStep,
    NestedReuse,
    PipelineSpec,
    PipelineStep,
    PlanStep,
    RetrySpec,
    StepRecord,
    StepStatus,
    TaskRouting,
    ToolStep,
    effective_retry,
    effective_timeout,
)
from stepflow.workflows.run_state import RunState
from stepflow.workflows.templates import Scope, TemplateError, render

AnyStep = ToolStep | AgentStep | ApprovalStep | InputStep | LoopStep | PipelineStep | PlanStep


def _no_slots(step_id: str) -> None:
    """A context without a scheduler's slots (tests of one runner)."""


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
    payload_store: bool = False
    """The run's workers keep large payloads outside history (children are told so too)."""
    outside: dict[str, Any] = field(default_factory=dict)
    """A child run's view of its parent: outputs of the parent's steps its steps may read."""
    outside_skipped: frozenset[str] = frozenset()
    """Those of `outside` that did not succeed: they read as null."""
    loop: dict[str, Any] | None = None
    """Inside a loop's body: `{iteration, max_iterations, previous}`."""
    item: Any = None
    index: int | None = None
    """Inside one instance of a for_each step: its item and index (from 0)."""
    no_cache: bool = False
    """`stepflow run --no-cache`: steps compute afresh (and keep what they computed)."""
    reuse_inside: dict[str, NestedReuse] = field(default_factory=dict)
    """A rerun from a step inside a loop or sub-pipeline: what its child run takes over."""
    budgets: list[BudgetLedger] = field(default_factory=list)
    """The ledgers of this run and the runs above it that have a `budget`: model calls check
    and charge them (`activities.budget`); child runs are handed them."""
    waits_for_person: Callable[[str], None] = _no_slots
    """A running step (a plan) now waits for a person: it frees its concurrency slot, and
    the run may continue as new meanwhile (`DagScheduler.wait_for_person`)."""
    answered: Callable[[str], None] = _no_slots
    """The person answered that step: it takes its slot back (`DagScheduler.answered`)."""
    _options: dict[str, tuple[RetrySpec, dict[str, Any]]] = field(default_factory=dict)
    """Tool steps' retry and activity options, worked out once per step that sets its own and
    once for all that take the pipeline's, not per call (keyed by step id, or "")."""

    def activity_options(self, step: ToolStep) -> tuple[RetrySpec, dict[str, Any]]:
        """The step's retry settings and `execute_activity` options (over the defaults)."""
        # Most steps set neither and share the pipeline's: worked out once per run.
        key = step.id if step.retry is not None or step.timeout is not None else ""
        known = self._options.get(key)
        if known is None:
            retry = effective_retry(step, self.spec.defaults)
            timeout = effective_timeout(step, self.spec.defaults)
            known = self._options[key] = (retry, activity_options(retry, timeout))
        return known

    def instance(self, item: Any, index: int) -> StepContext:
        """The context of a for_each step's instance number `index`."""
        return replace(self, item=item, index=index)

    def key(self, step: AnyStep) -> str:
        """What names this step (or instance) in ids, keys and summaries: `research[3]`."""
        return step.id if self.index is None else f"{step.id}[{self.index}]"

    def dependency_outputs(self, step: AnyStep) -> dict[str, Any]:
        """The outputs of the steps `step` depends on, in this run or (a child's) its parent."""
        records = self.state.by_id
        return {
            # A loop's steps see the outputs of the loop's dependencies without naming them.
            **self.outside,
            **{
                dep: records[dep].output if dep in records else self.outside.get(dep)
                for dep in step.depends_on
            },
        }

    def _nulls(self, step: AnyStep) -> frozenset[str]:
        """Dependencies that did not succeed (a `none_failed` or `all_done` step's)."""
        records = self.state.by_id
        failed = {
            dep
            for dep in step.depends_on
            if dep in records and records[dep].status not in WITH_OUTPUT
        }
        return frozenset(failed) | self.outside_skipped

    def _scope_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.index is not None:
            values["item"] = self.item
            values["index"] = self.index
        if self.loop is not None:
            values["loop"] = self.loop
        return values

    def render(self, step: AnyStep, template: Any) -> Any:
        """`template` with the run's inputs and the outputs of the steps `step` depends on."""
        scope = Scope(self._scope_values(), self._nulls(step))
        try:
            return render(template, self.inputs, self.dependency_outputs(step), scope)
        except TemplateError as err:
            raise StepFailure(ErrorType.INVALID_REFERENCE, str(err), attempts=0) from None

    def condition(self, step: AnyStep, expression: str) -> bool:
        """`expression` (a `when`) over the inputs, the dependencies and the scope."""
        records = self.state.by_id
        steps = {
            dep: {
                "output": output,
                "status": (
                    StepStatus.SUCCEEDED.value
                    if dep in records and records[dep].status is StepStatus.REUSED
                    else records[dep].status.value
                    if dep in records
                    else ("SKIPPED" if dep in self.outside_skipped else "SUCCEEDED")
                ),
            }
            for dep, output in self.dependency_outputs(step).items()
        }
        context = {"inputs": self.inputs, "steps": steps, **self._scope_values()}
        try:
            return is_true(expression, context)
        except ExpressionError as err:
            raise StepFailure(ErrorType.INVALID_EXPRESSION, str(err), attempts=0) from None


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
