"""Temporal Schedules that start a pipeline on a cron expression or every N (`stepflow schedule`).

A Schedule lives on the server: it starts runs while no worker or CLI is up,
and its runs are ordinary pipeline runs (workflow id `<schedule id>-<time>`,
same search attributes and memo as `stepflow run`). The pipeline and its
inputs are checked completely when the schedule is created, not when the
first run fails at 3 a.m.

schedules = PipelineSchedules(await StepflowClient.connect())
await schedules.create("examples/hello.yaml", {"topic": "x"}, every=timedelta(hours=1))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import (
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionResult,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleListActionStartWorkflow,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from stepflow.client.api import StepflowClient, load_pipeline
from stepflow.client.runs import attributes_unregistered, stepflow_attributes, warn_unregistered
from stepflow.runtime.routing import task_routing
from stepflow.workflows.durations import format_duration
from stepflow.workflows.models import PipelineInput, PipelineSpec
from stepflow.workflows.pipeline import PIPELINE_WORKFLOW, PipelineWorkflow
from stepflow.workflows.validation import resolve_inputs


class ScheduleError(ValueError):
    """The schedule cannot be made as asked: a bad cron expression, an id in use, ..."""


class ScheduleNotFound(LookupError):
    """No schedule with that id in this namespace."""


@dataclass(frozen=True)
class ScheduleSummary:
    """One pipeline schedule, as `stepflow schedule list` shows it."""

    schedule_id: str
    pipeline: str | None
    when: str
    """`every 1h` or `cron 0 9 * * 1-5`, as it was created."""
    paused: bool = False
    note: str | None = None
    next_run: datetime | None = None
    recent_runs: list[str] = field(default_factory=list)
    """Workflow ids of the latest runs it started, oldest first."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["next_run"] = self.next_run.isoformat() if self.next_run else None
        return data


def _when(cron: str | None, every: timedelta | None) -> tuple[ScheduleSpec, str]:
    if (cron is None) == (every is None):
        raise ScheduleError("give exactly one of a cron expression or an interval (every)")
    if every is not None:
        if every < timedelta(seconds=1):
            raise ScheduleError(f"interval {format_duration(every)}: must be 1s or longer")
        return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]), (
            f"every {format_duration(every)}"
        )
    assert cron is not None  # the server checks the expression and says what is wrong
    return ScheduleSpec(cron_expressions=[cron]), f"cron {cron}"


def _run_ids(actions: list[ScheduleActionResult]) -> list[str]:
    return [
        a.action.workflow_id
        for a in actions
        if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
    ]


class PipelineSchedules:
    """Create, list, pause, unpause and delete the schedules that start pipelines."""

    def __init__(self, stepflow: StepflowClient) -> None:
        self.stepflow = stepflow
        self.temporal = stepflow.temporal

    def _handle(self, schedule_id: str) -> ScheduleHandle:
        return self.temporal.get_schedule_handle(schedule_id)

    async def create(
        self,
        pipeline: PipelineSpec | str | Path,
        inputs: dict[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        schedule_id: str | None = None,
        task_queue: str | None = None,
    ) -> ScheduleSummary:
        """Check the pipeline and inputs completely, then create the schedule.

        Args:
            cron: A cron expression (`0 9 * * 1-5`, `@hourly`); or
            every: an interval (1s or longer).
            schedule_id: Defaults to `<pipeline-name>-schedule`.

        Raises:
            SpecError: the pipeline or inputs are invalid.
            ScheduleError: a bad cron expression or interval, or the id is in use.
        """
        spec = load_pipeline(pipeline)
        resolved = resolve_inputs(spec, inputs or {})
        schedule_spec, when = _when(cron, every)
        schedule_id = schedule_id or f"{spec.name}-schedule"
        memo = {"pipeline": spec.name, "description": spec.description or ""}
        # Frozen into the schedule: after a routing change, create the schedule anew.
        routing = task_routing(self.stepflow.settings)

        def schedule(attributes: TypedSearchAttributes) -> Schedule:
            action = ScheduleActionStartWorkflow(
                PipelineWorkflow.run,
                PipelineInput(
                    spec=spec,
                    inputs=resolved,
                    routing=routing,
                    payload_store=self.stepflow.settings.payload_store != "off",
                ),
                id=schedule_id,
                task_queue=task_queue or self.stepflow.settings.task_queue,
                memo=memo,
                typed_search_attributes=attributes,
                static_summary=f"pipeline {spec.name} (schedule {schedule_id})",
            )
            return Schedule(action=action, spec=schedule_spec, state=ScheduleState(note=when))

        async def create(attributes: TypedSearchAttributes) -> None:
            await self.temporal.create_schedule(
                schedule_id, schedule(attributes), memo={**memo, "when": when}
            )

        try:
            try:
                await create(stepflow_attributes(spec.name))
            except RPCError as err:
                if not attributes_unregistered(err):
                    raise
                warn_unregistered(err)
                await create(TypedSearchAttributes.empty)
        except ScheduleAlreadyRunningError:
            raise ScheduleError(
                f"a schedule with id {schedule_id!r} exists already "
                f"(`stepflow schedule delete {schedule_id}`, or choose another --id)"
            ) from None
        except RPCError as err:
            if err.status == RPCStatusCode.INVALID_ARGUMENT:
                reason = err.message.removeprefix("Invalid schedule spec: ")
                raise ScheduleError(f"invalid schedule ({when}): {reason}") from None
            raise
        return await self.describe(schedule_id)

    async def describe(self, schedule_id: str) -> ScheduleSummary:
        """One schedule, read from the server now (unlike `list`, not eventually consistent).

        Raises:
            ScheduleNotFound: no such schedule.
        """
        with _not_found(schedule_id):
            description = await self._handle(schedule_id).describe()
        memo = await description.memo()
        action = description.schedule.action
        pipeline = memo.get("pipeline")
        return ScheduleSummary(
            schedule_id=schedule_id,
            pipeline=pipeline if isinstance(pipeline, str) else None,
            when=str(memo.get("when") or _spec_text(description.schedule.spec)),
            paused=description.schedule.state.paused,
            note=description.schedule.state.note,
            next_run=next(iter(description.info.next_action_times), None),
            recent_runs=_run_ids(list(description.info.recent_actions))
            if isinstance(action, ScheduleActionStartWorkflow)
            else [],
        )

    async def list_schedules(self) -> list[ScheduleSummary]:
        """The namespace's pipeline schedules (other schedules are left out).

        Visibility is eventually consistent: a schedule just created or deleted
        may take a second to show up or go.
        """
        found = []
        async for entry in await self.temporal.list_schedules():
            listed = entry.schedule
            if listed is None or not isinstance(listed.action, ScheduleListActionStartWorkflow):
                continue
            if listed.action.workflow != PIPELINE_WORKFLOW:
                continue
            memo = await entry.memo()
            pipeline = memo.get("pipeline")
            info = entry.info
            found.append(
                ScheduleSummary(
                    schedule_id=entry.id,
                    pipeline=pipeline if isinstance(pipeline, str) else None,
                    when=str(memo.get("when") or _spec_text(listed.spec)),
                    paused=listed.state.paused,
                    note=listed.state.note,
                    next_run=next(iter(info.next_action_times), None) if info else None,
                    recent_runs=_run_ids(list(info.recent_actions)) if info else [],
                )
            )
        return sorted(found, key=lambda s: s.schedule_id)

    async def pause(self, schedule_id: str, note: str | None = None) -> None:
        """No run starts until `unpause`. Raises `ScheduleNotFound`."""
        with _not_found(schedule_id):
            await self._handle(schedule_id).pause(note=note or "paused with stepflow")

    async def unpause(self, schedule_id: str, note: str | None = None) -> None:
        """Runs start again at the next matching time. Raises `ScheduleNotFound`."""
        with _not_found(schedule_id):
            await self._handle(schedule_id).unpause(note=note or "unpaused with stepflow")

    async def trigger(self, schedule_id: str) -> None:
        """Start a run now, whatever the spec says. Raises `ScheduleNotFound`."""
        with _not_found(schedule_id):
            await self._handle(schedule_id).trigger()

    async def delete(self, schedule_id: str) -> None:
        """Delete the schedule; runs it started go on. Raises `ScheduleNotFound`."""
        with _not_found(schedule_id):
            await self._handle(schedule_id).delete()


@contextmanager
def _not_found(schedule_id: str) -> Iterator[None]:
    """The server's NOT_FOUND about a schedule as `ScheduleNotFound`."""
    try:
        yield
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFound(f"no schedule with id {schedule_id!r}") from None
        raise


def _spec_text(spec: ScheduleSpec) -> str:
    """A readable spec for schedules made outside Stepflow (no `when` in the memo)."""
    parts = [f"every {format_duration(i.every)}" for i in spec.intervals]
    parts += [f"cron {c}" for c in spec.cron_expressions]
    return ", ".join(parts) or "calendar"
