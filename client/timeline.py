"""A run's Temporal history as a short timeline people can read (`stepflow history`).

Raw history is dozens of events per step (workflow tasks, scheduled, started,
completed...). A person wants one line per thing that happened: a step's call
completed or failed (and on which attempt), a timer fired, an approval arrived,
the run's status changed. Steps are named by the summaries the workflow gives
its activities (`plan · model call 1/10`), so the timeline reads like the Web UI.
Agent steps run as child workflows; their events are merged in, in time order.
A plan step's planner, when it completes, shows the plan it made as a small table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import RetryState
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import DataConverter, decode_search_attributes

from stepflow.client.plan_view import is_plan, plan_lines
from stepflow.runtime.encryption import readable_failure
from stepflow.workflows.control import STATUS_ATTRIBUTE, STEP_PROGRESS
from stepflow.workflows.durations import format_duration
from stepflow.workflows.steps.plan import PLANNER_SUMMARY

_RETRY_STATE = {
    RetryState.RETRY_STATE_NON_RETRYABLE_FAILURE: "non-retryable",
    RetryState.RETRY_STATE_TIMEOUT: "out of time",
    RetryState.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED: "retries exhausted",
}
"""Why a call failed for good, where that is worth saying."""


@dataclass(frozen=True)
class TimelineEvent:
    """One line of the timeline."""

    event_id: int
    time: datetime
    elapsed: timedelta = field(metadata={"doc": "Since the run started."})
    subject: str = ""
    """What the line is about: `run`, `plan · tool search`, `update approve`, `status`."""
    what: str = ""
    """What happened to it: `completed (attempt 1)`, `failed (attempt 3): ...`."""
    workflow_id: str = ""
    plan: dict[str, Any] | None = None
    """A plan step's planner completed: the plan it made (shown as a table under the line)."""

    def line(self, subject_width: int = 0) -> str:
        return (
            f"{'+' + format_elapsed(self.elapsed):>9}  {self.subject:<{subject_width}}  {self.what}"
        )

    def lines(self, subject_width: int = 0) -> list[str]:
        """The line, and under it the plan's table if there is one."""
        if self.plan is None:
            return [self.line(subject_width)]
        return [self.line(subject_width), *(f"{'':11}{row}" for row in plan_lines(self.plan))]

    def to_json(self) -> dict[str, Any]:
        shown = {
            "event_id": self.event_id,
            "workflow_id": self.workflow_id,
            "time": self.time.isoformat(),
            "elapsed_seconds": round(self.elapsed.total_seconds(), 3),
            "subject": self.subject,
            "what": self.what,
        }
        if self.plan is not None:
            shown["plan"] = self.plan
        return shown


def format_elapsed(value: timedelta) -> str:
    """`0.41s`, `12.3s`, `2m05s`, `1h02m`: short, and sortable by eye."""
    seconds = max(value.total_seconds(), 0.0)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_lines(events: Sequence[TimelineEvent]) -> list[str]:
    """The timeline as aligned text lines."""
    width = min(max((len(e.subject) for e in events), default=0), 40)
    return [line for event in events for line in event.lines(width)]


def failure_text(failure: Failure) -> str:
    """`Type: message`, following causes to the one that says what went wrong."""
    while failure.HasField("cause") and not failure.message:
        failure = failure.cause
    kind = (
        failure.application_failure_info.type
        if failure.HasField("application_failure_info")
        else ""
    )
    message = failure.message
    if failure.HasField("cause") and failure.cause.message:  # an activity error wraps the cause
        inner = failure.cause
        inner_kind = (
            inner.application_failure_info.type
            if inner.HasField("application_failure_info")
            else ""
        )
        kind, message = inner_kind or kind, inner.message
    return f"{kind}: {message}" if kind else message


def _compact(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _request(name: str, args: list[Any]) -> tuple[str, str]:
    """A control request's subject (`deploy · update approve`) and its other arguments."""
    if len(args) == 1 and isinstance(args[0], dict) and isinstance(args[0].get("step"), str):
        rest = {k: v for k, v in args[0].items() if k != "step" and v is not None}
        shown = ", ".join(f"{k}={_compact(v, 50)}" for k, v in rest.items())
        return f"{args[0]['step']} · {name}", shown
    if not args:
        return name, ""
    return name, _compact(args[0] if len(args) == 1 else args, 60)


class _Builder:
    """Walks one workflow's events, remembering what each later event refers back to."""

    def __init__(self, converter: DataConverter, origin: datetime | None, child: bool) -> None:
        self.converter = converter
        self.origin = origin
        self.child = child
        self.workflow_id = ""
        self.subjects: dict[int, str] = {}  # scheduled/initiated event id -> subject
        self.attempts: dict[int, int] = {}  # activity started event id -> attempt
        self.updates: dict[int, tuple[str, str]] = {}  # update accepted id -> subject, args
        self.out: list[TimelineEvent] = []

    async def decode(self, payloads: Payloads) -> list[Any]:
        if not payloads.payloads:
            return []
        try:
            return await self.converter.decode(payloads.payloads)
        except Exception:  # a payload this client cannot read is still an event worth a line
            return ["…"]

    async def failure_text(self, failure: Failure) -> str:
        """`failure_text` of the failure opened: encrypted messages are decrypted first."""
        return failure_text(await readable_failure(self.converter, failure))

    async def summary(self, event: HistoryEvent) -> str | None:
        if not event.HasField("user_metadata") or not event.user_metadata.HasField("summary"):
            return None
        try:
            [value] = await self.converter.decode([event.user_metadata.summary])
        except Exception:
            return None
        return str(value)

    def add(
        self, event: HistoryEvent, subject: str, what: str, plan: dict[str, Any] | None = None
    ) -> None:
        time = _time(event)
        if self.origin is None:
            self.origin = time
        self.out.append(
            TimelineEvent(
                event.event_id, time, time - self.origin, subject, what, self.workflow_id, plan
            )
        )

    def attempt(self, started_event_id: int) -> str:
        attempt = self.attempts.get(started_event_id)
        return f" (attempt {attempt})" if attempt else ""

    async def event(self, event: HistoryEvent) -> None:
        kind = event.WhichOneof("attributes") or ""
        handler = getattr(self, "on_" + kind.removesuffix("_event_attributes"), None)
        if handler is not None:
            await handler(event, getattr(event, kind))

    # One handler per kind of event worth a line (or worth remembering for a later line).

    async def on_workflow_execution_started(self, event: HistoryEvent, a: Any) -> None:
        self.workflow_id = a.workflow_id or self.workflow_id
        if self.child or a.continued_execution_run_id:
            # A child's start is in its parent's history; a continued run's in the "continued
            # as new" line of the run before.
            self.origin = self.origin or _time(event)
            return
        summary = await self.summary(event)
        self.add(event, "run", f"started ({summary or a.workflow_type.name})")

    async def on_activity_task_scheduled(self, event: HistoryEvent, a: Any) -> None:
        subject = await self.summary(event) or a.activity_type.name
        self.subjects[event.event_id] = subject
        self.add(event, subject, "scheduled")

    async def on_activity_task_started(self, event: HistoryEvent, a: Any) -> None:
        self.attempts[event.event_id] = a.attempt
        if a.attempt > 1:  # earlier attempts leave no events: their last failure is here
            earlier = f"; attempt {a.attempt - 1} failed"
            if a.HasField("last_failure"):
                earlier += f": {_compact(await self.failure_text(a.last_failure), 70)}"
            subject = self.subjects.get(a.scheduled_event_id, "activity")
            self.add(event, subject, f"retrying: attempt {a.attempt} started{earlier}")

    async def on_activity_task_completed(self, event: HistoryEvent, a: Any) -> None:
        subject = self.subjects.get(a.scheduled_event_id, "activity")
        self.add(event, subject, f"completed{self.attempt(a.started_event_id)}")

    async def on_activity_task_failed(
        self, event: HistoryEvent, a: Any, verb: str = "failed"
    ) -> None:
        subject = self.subjects.get(a.scheduled_event_id, "activity")
        attempt = self.attempt(a.started_event_id).strip(" ()")
        notes = ", ".join(n for n in (attempt, _RETRY_STATE.get(a.retry_state)) if n)
        notes = f" ({notes})" if notes else ""
        self.add(event, subject, f"{verb}{notes}: {_compact(await self.failure_text(a.failure))}")

    async def on_activity_task_timed_out(self, event: HistoryEvent, a: Any) -> None:
        await self.on_activity_task_failed(event, a, verb="timed out")

    async def on_activity_task_cancel_requested(self, event: HistoryEvent, a: Any) -> None:
        self.add(event, self.subjects.get(a.scheduled_event_id, "activity"), "cancel requested")

    async def on_activity_task_canceled(self, event: HistoryEvent, a: Any) -> None:
        self.add(event, self.subjects.get(a.scheduled_event_id, "activity"), "cancelled")

    async def on_timer_started(self, event: HistoryEvent, a: Any) -> None:
        subject = await self.summary(event) or f"timer {a.timer_id}"
        self.subjects[event.event_id] = subject
        duration = format_duration(a.start_to_fire_timeout.ToTimedelta())
        self.add(event, subject, f"timer started ({duration})")

    async def on_timer_fired(self, event: HistoryEvent, a: Any) -> None:
        self.add(event, self.subjects.get(a.started_event_id, "timer"), "timer fired")

    async def on_timer_canceled(self, event: HistoryEvent, a: Any) -> None:
        self.add(event, self.subjects.get(a.started_event_id, "timer"), "timer cancelled")

    async def on_start_child_workflow_execution_initiated(
        self, event: HistoryEvent, a: Any
    ) -> None:
        self.subjects[event.event_id] = await self.summary(event) or f"child {a.workflow_id}"

    async def on_start_child_workflow_execution_failed(self, event: HistoryEvent, a: Any) -> None:
        self.add(event, self.subjects.get(a.initiated_event_id, "child"), "could not start")

    async def on_child_workflow_execution_started(self, event: HistoryEvent, a: Any) -> None:
        subject = self.subjects.get(a.initiated_event_id, "child")
        self.add(event, subject, f"started ({a.workflow_execution.workflow_id})")

    async def on_child_workflow_execution_completed(
        self, event: HistoryEvent, a: Any, what: str = "completed"
    ) -> None:
        if a.HasField("failure") if hasattr(a, "failure") else False:
            what += f": {_compact(await self.failure_text(a.failure))}"
        subject = self.subjects.get(a.initiated_event_id, "child")
        plan = None
        if subject.startswith(PLANNER_SUMMARY) and what == "completed":
            plan = await self.planned(a.result)
            what += f": a plan of {len(plan['steps'])} steps" if plan else ""
        self.add(event, subject, what, plan)

    async def planned(self, result: Payloads) -> dict[str, Any] | None:
        """The plan a planner's result holds (`AgentStepResult.output`), or None."""
        decoded = await self.decode(result)
        output = decoded[0].get("output") if decoded and isinstance(decoded[0], dict) else None
        return output if is_plan(output) else None

    async def on_child_workflow_execution_failed(self, event: HistoryEvent, a: Any) -> None:
        await self.on_child_workflow_execution_completed(event, a, "failed")

    async def on_child_workflow_execution_canceled(self, event: HistoryEvent, a: Any) -> None:
        await self.on_child_workflow_execution_completed(event, a, "cancelled")

    async def on_child_workflow_execution_timed_out(self, event: HistoryEvent, a: Any) -> None:
        await self.on_child_workflow_execution_completed(event, a, "timed out")

    async def on_child_workflow_execution_terminated(self, event: HistoryEvent, a: Any) -> None:
        await self.on_child_workflow_execution_completed(event, a, "terminated")

    async def on_workflow_execution_signaled(self, event: HistoryEvent, a: Any) -> None:
        if a.signal_name == STEP_PROGRESS:
            return  # Stepflow's own bookkeeping; the activities' events say the same
        subject, shown = _request(f"signal {a.signal_name}", await self.decode(a.input))
        self.add(event, subject, f"received{f' ({shown})' if shown else ''}")

    async def on_workflow_execution_update_accepted(self, event: HistoryEvent, a: Any) -> None:
        request = a.accepted_request.input
        self.updates[event.event_id] = _request(
            f"update {request.name}", await self.decode(request.args)
        )

    async def on_workflow_execution_update_completed(self, event: HistoryEvent, a: Any) -> None:
        subject, shown = self.updates.get(a.accepted_event_id, ("update", ""))
        if a.outcome.HasField("failure"):
            what = f"failed: {_compact(await self.failure_text(a.outcome.failure))}"
        else:
            result = await self.decode(a.outcome.success)
            what = _compact(result[0]) if result else "done"
        self.add(event, subject, f"{shown} -> {what}" if shown else what)

    async def on_upsert_workflow_search_attributes(self, event: HistoryEvent, a: Any) -> None:
        for name, values in decode_search_attributes(a.search_attributes).items():
            value = values[0] if len(values) == 1 else values
            if name == STATUS_ATTRIBUTE.name:
                self.add(event, "run", f"status {value}")
            elif not name.startswith("Temporal"):  # the SDK's own, e.g. TemporalChangeVersion
                self.add(event, f"search attribute {name}", f"= {_compact(value)}")

    async def on_workflow_task_failed(self, event: HistoryEvent, a: Any) -> None:
        self.add(event, "workflow task", f"failed: {_compact(await self.failure_text(a.failure))}")

    async def on_workflow_task_timed_out(self, event: HistoryEvent, a: Any) -> None:
        self.add(event, "workflow task", "timed out (a worker stopped answering?)")

    async def run_event(self, event: HistoryEvent, what: str) -> None:
        if not self.child:  # a child's end is in the parent's history already
            self.add(event, "run", what)

    async def on_workflow_execution_cancel_requested(self, event: HistoryEvent, a: Any) -> None:
        await self.run_event(event, "cancel requested")

    async def on_workflow_execution_terminated(self, event: HistoryEvent, a: Any) -> None:
        await self.run_event(event, f"terminated{f': {a.reason}' if a.reason else ''}")

    async def on_workflow_execution_completed(self, event: HistoryEvent, a: Any) -> None:
        await self.run_event(event, "completed")

    async def on_workflow_execution_failed(self, event: HistoryEvent, a: Any) -> None:
        await self.run_event(event, f"failed: {_compact(await self.failure_text(a.failure))}")

    async def on_workflow_execution_canceled(self, event: HistoryEvent, a: Any) -> None:
        await self.run_event(event, "cancelled")

    async def on_workflow_execution_timed_out(self, event: HistoryEvent, a: Any) -> None:
        await self.run_event(event, "timed out")

    async def on_workflow_execution_continued_as_new(self, event: HistoryEvent, a: Any) -> None:
        await self.run_event(event, "continued as new (its history had grown long)")


def _time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


def previous_run(events: Sequence[HistoryEvent]) -> str | None:
    """The run this one continued as new from, if it did."""
    if events and events[0].HasField("workflow_execution_started_event_attributes"):
        attributes = events[0].workflow_execution_started_event_attributes
        return attributes.continued_execution_run_id or None
    return None


def next_run(events: Sequence[HistoryEvent]) -> str | None:
    """The run this one continued as new into, if it did."""
    if events and events[-1].HasField("workflow_execution_continued_as_new_event_attributes"):
        attributes = events[-1].workflow_execution_continued_as_new_event_attributes
        return attributes.new_execution_run_id or None
    return None


def child_executions(events: Sequence[HistoryEvent]) -> list[tuple[str, str]]:
    """(workflow id, run id) of every child workflow that started."""
    return [
        (
            e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id,
            e.child_workflow_execution_started_event_attributes.workflow_execution.run_id,
        )
        for e in events
        if e.HasField("child_workflow_execution_started_event_attributes")
    ]


async def build_timeline(
    events: Sequence[HistoryEvent],
    converter: DataConverter,
    *,
    origin: datetime | None = None,
    child: bool = False,
) -> list[TimelineEvent]:
    """The meaningful events of one workflow's history, in order.

    Args:
        origin: What elapsed times count from; default: this history's first event.
        child: A child workflow's history: its own start and end are left out (the
            parent's events about the child say them).
    """
    builder = _Builder(converter, origin, child)
    for event in events:
        await builder.event(event)
    return builder.out


def merge(*timelines: Sequence[TimelineEvent]) -> list[TimelineEvent]:
    """Timelines of a run and its children as one, in time order (ties: the parent first)."""
    return sorted((e for t in timelines for e in t), key=lambda e: e.time)
