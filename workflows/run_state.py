"""`RunState`: everything a pipeline run must remember, and what continue-as-new hands over.

One model for both, so nothing a run remembers can be forgotten at the hand-over:
a new field here is carried to the next run of the chain by construction.
Outputs are not kept apart: they are the succeeded records' own.

The JSON is the one runs have always carried (`PipelineInput.carried`, once
`PipelineCarry`): histories recorded before this model still parse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_serializer

from stepflow.workflows.records import (
    QUIET,
    WITH_OUTPUT,
    ChatMessage,
    StepRecord,
    StepStatus,
    TokenUsage,
)

if TYPE_CHECKING:
    from stepflow.workflows.control import StepProgress
    from stepflow.workflows.errors import StepFailure


class LedgerState(BaseModel):
    """A run's budget ledger: what its model calls, its children's included, have spent.

    Kept by the ledger workflow of a run whose spec has a `budget`
    (`workflows.budget.BudgetLedgerWorkflow`), and carried across its continue-as-new.
    """

    spent: TokenUsage = Field(default_factory=TokenUsage)
    refused: bool = Field(default=False, description="A model call was refused for the budget.")
    charges: list[str] = Field(
        default_factory=list,
        description="The latest charges' ids: one repeated after the run continued as new "
        "(where Temporal's own dedupe of update ids does not reach) counts once.",
    )


class RunState(BaseModel):
    """A pipeline run's memory: the step records and what people asked of the run.

    Live, `records` holds every step of the spec in order. Handed over, it holds
    only the steps that are no longer PENDING (the next run makes the others
    afresh). Approval and input steps that were WAITING go on waiting in the next
    run, until `started_at` plus their timeout.
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
    ledger: LedgerState | None = Field(
        default=None,
        description="Unused: the spend of a run with a `budget` is kept by its ledger workflow. "
        "Runs of a build that kept it here (only ever in tests) still parse.",
    )

    _index: dict[str, StepRecord] = PrivateAttr(default_factory=dict)
    _succeeded: dict[str, None] = PrivateAttr(default_factory=dict)
    """Succeeded steps in the order they succeeded: `context: full` shows outputs so."""
    _counts: Counter[StepStatus] = PrivateAttr(default_factory=Counter)
    _active: dict[str, None] = PrivateAttr(default_factory=dict)
    """Steps worth a look (running, waiting, failed): what big runs' details list."""
    _listeners: list[Callable[[StepRecord], None]] = PrivateAttr(default_factory=list)
    _position: dict[str, int] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        self._index = {r.id: r for r in self.records}
        self._succeeded = {r.id: None for r in self.records if r.status in WITH_OUTPUT}
        self._counts = Counter(r.status for r in self.records)
        self._active = {r.id: None for r in self.records if r.status not in QUIET}
        self._listeners = []
        self._position = {r.id: i for i, r in enumerate(self.records)}

    # -- statuses: every change goes through `set_status`, so counts cost O(1) a step -----

    def set_status(self, record: StepRecord, status: StepStatus) -> None:
        """`record` (one of this run's) is now in `status`; the counts follow."""
        old = record.status
        if old is status:
            return
        record.status = status
        self._counts[old] -= 1
        self._counts[status] += 1
        if status in QUIET:
            self._active.pop(record.id, None)
        else:
            self._active[record.id] = None
        for listener in self._listeners:
            listener(record)

    def on_status(self, listener: Callable[[StepRecord], None]) -> None:
        """Call `listener` with each record whose status changes from now on."""
        self._listeners.append(listener)

    @property
    def counts(self) -> dict[StepStatus, int]:
        """Steps by status (the statuses some step is in)."""
        return {status: n for status, n in self._counts.items() if n}

    def count(self, status: StepStatus) -> int:
        return self._counts[status]

    def active(self) -> list[StepRecord]:
        """The steps worth a look, in spec order: running, retrying, waiting, failed."""
        return sorted(
            (self._index[sid] for sid in self._active), key=lambda r: self._position[r.id]
        )

    @field_serializer("records")
    def _compact(self, records: list[StepRecord]) -> list[dict[str, Any]]:
        # PENDING records are made afresh by the next run, and fields left at their
        # defaults are most of a record: thousands of steps must fit.
        return [
            r.model_dump(mode="json", exclude_defaults=True)
            for r in records
            if r.status is not StepStatus.PENDING
        ]

    @classmethod
    def begin(
        cls,
        steps: Iterable[tuple[str, str]],
        carried: RunState | None,
        now: datetime,
        reused: Iterable[StepRecord] = (),
    ) -> RunState:
        """The state of a run of `steps` (id, kind): fresh, or taking over `carried`.

        Args:
            reused: A rerun's first run: records of steps taken over from the run it reruns.
        """
        taken = {r.id: r for r in carried.records} if carried else {r.id: r for r in reused}
        records = [taken.get(sid) or StepRecord(id=sid, kind=kind) for sid, kind in steps]
        if carried is None:
            return cls(started_at=now, records=records, runs=0)
        return cls(
            started_at=carried.started_at,
            records=records,
            transcripts=list(carried.transcripts),
            paused=carried.paused,
            cancel_requests=dict(carried.cancel_requests),
            answers=dict(carried.answers),
            runs=carried.runs,
            ledger=carried.ledger,
        )

    def handover(self) -> RunState:
        """What the next run of the chain takes over: this state, one run further."""
        return self.model_copy(update={"runs": self.runs + 1})

    def record(self, step_id: str) -> StepRecord:
        return self._index[step_id]

    def find(self, step_id: str) -> StepRecord | None:
        return self._index.get(step_id)

    @property
    def by_id(self) -> dict[str, StepRecord]:
        """Every record by step id (read-only use: the records themselves are shared)."""
        return self._index

    def succeeded(self, step_id: str) -> bool:
        record = self._index.get(step_id)
        return record is not None and record.status in WITH_OUTPUT

    def succeed(self, record: StepRecord, output: Any) -> None:
        """`record` succeeded with `output` (its own, or its fallback)."""
        self.set_status(record, StepStatus.SUCCEEDED)
        record.output = output
        self._succeeded[record.id] = None

    def fail(self, record: StepRecord, failure: StepFailure) -> None:
        """`record`'s step failed for good (before its `on_failure` applies)."""
        self.set_status(record, failure.status)
        record.error = failure.message
        record.error_type = str(failure.error_type)
        record.attempts = failure.attempts
        record.waiting_for = None
        if failure.status is StepStatus.CANCELLED and record.id in self.cancel_requests:
            record.comment = self.cancel_requests[record.id]
            record.error = cancel_message(record.comment)
        if failure.agent:
            record.model = failure.agent.get("model")
            record.usage = TokenUsage.model_validate(failure.agent.get("usage") or {})
            record.tool_calls = failure.agent.get("tool_calls")
            record.usage_by_model = _usage_by_model(failure.agent.get("usage_by_model"))

    def take_progress(self, progress: StepProgress) -> bool:
        """Note a running step's progress report; False if it came too late to matter."""
        record = self._index.get(progress.step)
        if record is None or record.status not in (StepStatus.RUNNING, StepStatus.RETRYING):
            return False  # late: the step has ended
        if record.items is not None:
            return False  # one instance of a for_each: the step counts its instances' ends
        if progress.model_call is not None:
            if progress.model_call < (record.model_call or 0):
                return False  # a retry report of an earlier call, overtaken by the next call
            if progress.model_call > (record.model_call or 0):
                record.model_call = progress.model_call
                self.set_status(record, StepStatus.RUNNING)
                record.attempts = 1
        if progress.usage is not None:
            record.usage = progress.usage
        if progress.tool_calls is not None:
            record.tool_calls = progress.tool_calls
        if progress.attempt is not None:
            record.attempts = progress.attempt
            self.set_status(
                record, StepStatus.RETRYING if progress.attempt > 1 else StepStatus.RUNNING
            )
        return True

    def output(self, step_id: str) -> Any:
        """The output of a step that succeeded (a fallback counts)."""
        return self._index[step_id].output

    def outputs(self, step_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Outputs of `step_ids`, which succeeded; None: of every step that did, in that order."""
        if step_ids is None:
            return {sid: self._index[sid].output for sid in self._succeeded}
        return {sid: self._index[sid].output for sid in step_ids}


def _usage_by_model(value: Any) -> dict[str, TokenUsage] | None:
    """A failed agent step's tokens per model, from its failure's details (None: none given)."""
    if not isinstance(value, dict) or not value:
        return None
    try:
        return {str(model): TokenUsage.model_validate(usage) for model, usage in value.items()}
    except ValidationError:  # details from a newer or older worker: the tokens still count
        return None


def cancel_message(comment: str | None) -> str:
    return "cancelled on request" + (f": {comment}" if comment else "")
