"""The Python API for scripts: start pipelines, watch and steer their runs, read their results.

client = await StepflowClient.connect()
run = await client.start_pipeline("examples/hello.yaml", {"topic": "durable agents"})
state = await client.status(run.workflow_id)      # the `status` query
await client.approve(run.workflow_id, "deploy", comment="looks good")
result = await client.get_result(run.workflow_id)

Schedules live in `client.schedules`, the `history` timeline in `client.timeline`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import TypedSearchAttributes
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from stepflow.client.loading import check_spec, load_spec_file
from stepflow.client.rerun import plan_rerun
from stepflow.client.runs import (
    RunSummary,
    attributes_unregistered,
    chain_memo,
    list_query,
    reruns_query,
    run_summary,
    stepflow_attributes,
    warn_unregistered,
)
from stepflow.client.sub_pipelines import resolve_pipeline_files
from stepflow.client.timeline import (
    TimelineEvent,
    build_timeline,
    child_executions,
    merge,
    next_run,
    previous_run,
)
from stepflow.runtime.connection import connect
from stepflow.runtime.routing import task_routing, warn_unserved
from stepflow.runtime.settings import Settings, get_settings
from stepflow.workflows import control
from stepflow.workflows.budget import BUDGET_QUERY, ledger_workflow_id
from stepflow.workflows.control import PipelineState, RunStatus, StepInput, StepRequest
from stepflow.workflows.models import (
    BudgetSpent,
    PipelineInput,
    PipelineResult,
    PipelineSpec,
    Reuse,
    StepRecord,
    StepStatus,
)
from stepflow.workflows.pipeline import PIPELINE_FAILED, PipelineWorkflow
from stepflow.workflows.run_view import total_usage
from stepflow.workflows.validation import resolve_inputs

LIVE_STATUSES = frozenset({RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.WAITING})
"""Statuses of a run whose spend may still grow: its ledger has the latest."""


class PipelineError(RuntimeError):
    """A run ended without a `PipelineResult`: invalid, cancelled, terminated or timed out."""


class RunNotFound(LookupError):
    """No run with that workflow id in this namespace."""


class RunAlreadyStarted(RuntimeError):
    """A run with the requested workflow id is still running; ids are unique among open runs."""


class ControlRejected(RuntimeError):
    """The run refused a request (its validator said why), or the run has already ended."""


@dataclass(frozen=True)
class PipelineRun:
    """A started run."""

    workflow_id: str
    run_id: str
    ui_url: str


QUERY_TIMEOUT = timedelta(seconds=10)
"""A query needs a worker; without one it would wait for the server's own deadline."""

UPDATE_TIMEOUT = timedelta(seconds=20)
"""An update needs a worker too; without one `execute_update` would wait for ever."""


def timed_out(err: RPCError) -> bool:
    """The call's own deadline passed (the SDK reports it as CANCELLED "Timeout expired")."""
    return err.status == RPCStatusCode.DEADLINE_EXCEEDED or (
        err.status == RPCStatusCode.CANCELLED and "Timeout expired" in err.message
    )


def load_pipeline(pipeline: PipelineSpec | str | Path) -> PipelineSpec:
    """A spec, or the spec in a YAML file, checked completely (tools included).

    Sub-pipeline files (`pipeline: FILE`) are read and put inline: relative to the
    file that names them, or, in a spec built in Python, to the current directory.

    Raises:
        SpecError: every problem found.
    """
    if isinstance(pipeline, PipelineSpec):
        spec = resolve_pipeline_files(pipeline)
    else:
        spec = load_spec_file(pipeline)
    check_spec(spec)
    return spec


@contextmanager
def control_errors(workflow_id: str) -> Iterator[None]:
    """Temporal's errors about one run as `RunNotFound` or `ControlRejected`: one clear line."""
    try:
        yield
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause)
        raise ControlRejected(message) from None
    except WorkflowQueryFailedError as err:
        raise ControlRejected(f"run {workflow_id} could not answer: {err.message}") from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            if "already completed" in err.message or "closing workflow" in err.message:
                raise ControlRejected(f"run {workflow_id} has already ended") from None
            raise RunNotFound(f"no run with id {workflow_id!r}") from None
        raise


class StepflowClient:
    """Starts pipelines on a Temporal namespace, steers their runs and reads their results."""

    def __init__(self, client: Client, *, settings: Settings | None = None) -> None:
        self.temporal = client
        self.settings = settings or get_settings()
        self.query_timeout = QUERY_TIMEOUT
        self.update_timeout = UPDATE_TIMEOUT
        self._attributes_registered = True

    @classmethod
    async def connect(cls, profile: str | None = None) -> StepflowClient:
        """Connect per TEMPORAL_* settings (`runtime.connection`)."""
        return cls(await connect(profile))

    def ui_url(self, workflow_id: str, run_id: str | None = None) -> str:
        """The run's page in the Temporal Web UI."""
        base = self.settings.ui_url.rstrip("/")
        # A child run's id has slashes (`<run>/revise/2`): one path segment, as the UI encodes it.
        url = f"{base}/namespaces/{self.temporal.namespace}/workflows/{quote(workflow_id, safe='')}"
        return f"{url}/{run_id}/history" if run_id else url

    def _handle(self, workflow_id: str, run_id: str | None = None) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle_for(
            PipelineWorkflow.run, workflow_id, run_id=run_id
        )

    # -- starting and results ---------------------------------------------------------------

    async def start_pipeline(
        self,
        pipeline: PipelineSpec | str | Path,
        inputs: dict[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        task_queue: str | None = None,
        no_cache: bool = False,
    ) -> PipelineRun:
        """Validate a pipeline and its inputs completely, then start it.

        The run carries the search attributes `StepflowPipeline` and `StepflowStatus`
        where the namespace has them registered; elsewhere it starts without them
        (with one warning), since a run matters more than its listing.

        Args:
            pipeline: A spec, or the path of a YAML file. Sub-pipeline files it names are
                read here (relative to it; for a spec, to the current directory).
            inputs: Values of the pipeline's inputs (checked against their types).
            workflow_id: Defaults to `<pipeline-name>-<8 hex digits>`.
            task_queue: Defaults to STEPFLOW_TASK_QUEUE (`stepflow`).
            no_cache: No step looks in the result cache (`cache:` steps compute afresh,
                and keep what they compute).

        Raises:
            workflows.validation.SpecError: the pipeline or inputs are invalid; nothing started.
            RunAlreadyStarted: a run with `workflow_id` is still running.
        """
        spec = load_pipeline(pipeline)
        return await self._start(spec, inputs or {}, workflow_id, task_queue, no_cache=no_cache)

    async def rerun(
        self,
        run_id: str,
        from_step: str | None = None,
        *,
        from_failed: bool = False,
        pipeline: PipelineSpec | str | Path | None = None,
        inputs: dict[str, Any] | None = None,
        workflow_id: str | None = None,
        task_queue: str | None = None,
    ) -> PipelineRun:
        """Start a new run of an ended run, from a step: the steps before it are taken over.

        Every step that is neither `from_step` nor downstream of it takes its output from
        the earlier run (status REUSED, `reused_from` naming it); `from_step` and everything
        after it run. `from_step` may name a step inside a loop or sub-pipeline
        (`revise.write`): the loop reruns from the iteration that step ran in.

        Args:
            run_id: The workflow id of the ended run (succeeded, failed or cancelled).
            from_step: The step to run again, with everything after it.
            from_failed: Instead of `from_step`: every step that failed, and after.
            pipeline: The pipeline to run instead of the earlier run's own: it may change
                anything at or after the step; the steps taken over must be unchanged.
            inputs: Inputs to change; the others are the earlier run's.

        Raises:
            client.rerun.RerunRefused: no such run or step, still running, nothing failed,
                or a step to take over changed.
            workflows.validation.SpecError: the new pipeline or inputs are invalid.
        """
        spec = load_pipeline(pipeline) if pipeline is not None else None
        plan = await plan_rerun(
            self.temporal, run_id, from_step, from_failed=from_failed, spec=spec, inputs=inputs
        )
        if spec is None:
            check_spec(plan.spec)
        return await self._start(
            plan.spec,
            plan.inputs,
            workflow_id or f"{plan.spec.name}-{uuid.uuid4().hex[:8]}",
            task_queue,
            plan.reuse,
        )

    async def _start(
        self,
        spec: PipelineSpec,
        inputs: dict[str, Any],
        workflow_id: str | None,
        task_queue: str | None,
        reuse: Reuse | None = None,
        *,
        no_cache: bool = False,
    ) -> PipelineRun:
        resolved = resolve_inputs(spec, inputs)
        workflow_id = workflow_id or f"{spec.name}-{uuid.uuid4().hex[:8]}"
        routing = task_routing(self.settings)  # the workers' queues: they share these settings

        async def start(attributes: TypedSearchAttributes | None) -> WorkflowHandle[Any, Any]:
            return await self.temporal.start_workflow(
                PipelineWorkflow.run,
                PipelineInput(
                    spec=spec,
                    inputs=resolved,
                    routing=routing,
                    payload_store=self.settings.payload_store != "off",
                    reuse=reuse,
                    no_cache=no_cache,
                ),
                id=workflow_id,
                task_queue=task_queue or self.settings.task_queue,
                memo={
                    "pipeline": spec.name,
                    "description": spec.description or "",
                    **chain_memo(datetime.now(UTC)),
                    **({"rerun_of": reuse.source} if reuse else {}),
                },
                search_attributes=attributes,
                static_summary=f"pipeline {spec.name}",
                static_details=f"rerun of `{reuse.source}`" if reuse else None,
            )

        try:
            if self._attributes_registered:
                try:
                    handle = await start(
                        stepflow_attributes(spec.name, reuse.source if reuse else None)
                    )
                except RPCError as err:
                    if not attributes_unregistered(err):
                        raise
                    warn_unregistered(err)
                    self._attributes_registered = False
                    handle = await start(None)
            else:
                handle = await start(None)
        except WorkflowAlreadyStartedError:
            raise RunAlreadyStarted(
                f"a run with id {workflow_id!r} is still running: choose another id, "
                f"or wait for it (stepflow result {workflow_id})"
            ) from None
        await warn_unserved(self.temporal, spec, routing)
        run_id = handle.result_run_id or ""
        return PipelineRun(workflow_id, run_id, self.ui_url(workflow_id, run_id))

    async def get_result(self, workflow_id: str, run_id: str | None = None) -> PipelineResult:
        """Wait for a run to end and return its result; a failed pipeline's too.

        Raises:
            RunNotFound: no such run.
            PipelineError: the run ended without a result (invalid spec, cancelled, ...).
        """
        handle = self._handle(workflow_id, run_id)
        try:
            return await handle.result(follow_runs=True)
        except WorkflowFailureError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == PIPELINE_FAILED:
                return PipelineResult.model_validate(cause.details[0])
            message = cause.message if hasattr(cause, "message") else str(cause)
            raise PipelineError(f"run {workflow_id} ended without a result: {message}") from err
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise RunNotFound(f"no run with id {workflow_id!r}") from None
            raise

    async def run_pipeline(
        self,
        pipeline: PipelineSpec | str | Path,
        inputs: dict[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        task_queue: str | None = None,
        no_cache: bool = False,
    ) -> PipelineResult:
        """`start_pipeline` then `get_result`."""
        run = await self.start_pipeline(
            pipeline, inputs, workflow_id=workflow_id, task_queue=task_queue, no_cache=no_cache
        )
        return await self.get_result(run.workflow_id, run.run_id)

    # -- seeing a run -----------------------------------------------------------------------

    async def status(self, workflow_id: str) -> PipelineState:
        """The run now, step by step (the `status` query; a closed run answers too).

        Raises:
            RunNotFound: no such run.
            ControlRejected: the run could not answer (e.g. its worker predates the query).
        """
        with control_errors(workflow_id):
            try:
                state = await self._handle(workflow_id).query(
                    control.STATUS_QUERY, result_type=PipelineState, rpc_timeout=self.query_timeout
                )
                state = await self._with_agent_progress(workflow_id, state)
                return await self._with_live_budget(workflow_id, state)
            except RPCError as err:
                if not timed_out(err):
                    raise
                raise ControlRejected(
                    f"run {workflow_id} did not answer within "
                    f"{self.query_timeout.total_seconds():g}s: "
                    "is a worker running on its task queue?"
                ) from None

    async def _with_agent_progress(self, workflow_id: str, state: PipelineState) -> PipelineState:
        """The running agent steps' (and planners') own progress: model call, tokens, retries.

        An agent step answers for itself (`AGENT_PROGRESS_QUERY`) instead of signalling its
        pipeline at every model call; a step that cannot answer now keeps the pipeline's view.
        """
        running = [
            r
            for r in state.steps
            # A plan step is its planner's conversation until the plan is made.
            if (r.kind == "agent" or (r.kind == "plan" and r.plan is None))
            and r.items is None
            and r.status in (StepStatus.RUNNING, StepStatus.RETRYING)
        ]
        if not running:
            return state

        async def ask(record: StepRecord) -> None:
            child = self.temporal.get_workflow_handle(f"{workflow_id}/{record.id}")
            try:
                progress = await child.query(
                    control.AGENT_PROGRESS_QUERY,
                    result_type=control.AgentProgress,
                    rpc_timeout=self.query_timeout,
                )
            except (RPCError, WorkflowQueryFailedError):
                return  # not started yet, ended meanwhile, or a worker that predates the query
            record.model_call = progress.model_call
            record.max_model_calls = progress.max_model_calls
            record.usage = progress.usage
            record.tool_calls = progress.tool_calls
            record.model = progress.model or record.model
            if progress.attempt:
                record.status = StepStatus.RETRYING
                record.attempts = progress.attempt

        await asyncio.gather(*(ask(r) for r in running))
        state.usage = total_usage(state.steps)
        return state

    async def _with_live_budget(self, workflow_id: str, state: PipelineState) -> PipelineState:
        """A running budgeted run: the spend its ledger has taken so far, calls of running
        steps included (the run itself knows only what its steps reported).

        The ledger is a workflow of its own (`<workflow id>.budget`); one that cannot answer
        (not started: nothing charged yet) leaves the run's own view. An ended run's view,
        the sum of its steps' usage, is final.
        """
        if state.budget is None or state.status not in LIVE_STATUSES:
            return state
        ledger = self.temporal.get_workflow_handle(ledger_workflow_id(workflow_id))
        try:
            live = await ledger.query(
                BUDGET_QUERY, result_type=BudgetSpent, rpc_timeout=self.query_timeout
            )
        except (RPCError, WorkflowQueryFailedError):
            return state
        state.budget = live.model_copy(update={"exceeded": live.exceeded or state.budget.exceeded})
        return state

    async def describe(self, workflow_id: str) -> RunSummary:
        """What Temporal itself knows of the run (no worker needed).

        Raises:
            RunNotFound: no such run.
        """
        with control_errors(workflow_id):
            return await run_summary(await self._handle(workflow_id).describe())

    async def list_runs(
        self, status: str | None = None, pipeline: str | None = None, limit: int = 50
    ) -> list[RunSummary]:
        """Pipeline runs, newest first, through visibility (eventually consistent: ~1 s behind).

        Args:
            status: A `RunStatus` value, or TERMINATED / TIMED_OUT.
            pipeline: A pipeline name (needs the `StepflowPipeline` search attribute).

        Raises:
            ValueError: an unknown status or a malformed pipeline name.
        """
        query = list_query(status, pipeline)
        runs = []
        async for execution in self.temporal.list_workflows(query, limit=limit):
            runs.append(await run_summary(execution))
        return runs

    async def reruns(self, workflow_id: str) -> list[RunSummary]:
        """The reruns of a run, newest first (through visibility: ~1 s behind).

        None where the namespace lacks the `StepflowRerunOf` search attribute: no rerun
        there can name its source (they start without it, with a warning).
        """
        runs = []
        try:
            async for execution in self.temporal.list_workflows(reruns_query(workflow_id)):
                runs.append(await run_summary(execution))
        except RPCError as err:
            if err.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
        return runs

    async def history(self, workflow_id: str) -> list[TimelineEvent]:
        """The run's events as a readable timeline, its agent steps' (child workflows') merged in.

        Raises:
            RunNotFound: no such run.
        """
        converter = self.temporal.data_converter
        with control_errors(workflow_id):
            runs = [list((await self._handle(workflow_id).fetch_history()).events)]
            # A long run continued as new: its earlier runs hold the earlier events.
            while (previous := previous_run(runs[0])) is not None:
                runs.insert(0, await self._events(workflow_id, previous) or [])
        timelines: list[list[TimelineEvent]] = []
        origin = None
        for events in runs:
            timelines.append(await build_timeline(events, converter, origin=origin))
            origin = origin or (timelines[0][0].time if timelines[0] else None)
        for events in runs:
            for child_id, child_run_id in child_executions(events):
                # An agent step's chain: from the run the pipeline started, forward.
                run_id: str | None = child_run_id
                while run_id is not None:
                    child_events = await self._events(child_id, run_id)
                    if child_events is None:
                        break  # gone (retention) before its parent's
                    timelines.append(
                        await build_timeline(child_events, converter, origin=origin, child=True)
                    )
                    run_id = next_run(child_events)
        return merge(*timelines)

    async def _events(self, workflow_id: str, run_id: str) -> list[HistoryEvent] | None:
        """One run's history events; None if Temporal no longer has them."""
        handle = self.temporal.get_workflow_handle(workflow_id, run_id=run_id)
        try:
            return list((await handle.fetch_history()).events)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            return None

    async def wait_closed(self, workflow_id: str) -> RunSummary:
        """The run once Temporal has closed it; bound the wait with `asyncio.timeout`."""
        while True:
            summary = await self.describe(workflow_id)
            if summary.closed:
                return summary
            await asyncio.sleep(0.1)

    # -- steering a run ---------------------------------------------------------------------

    async def _update(self, workflow_id: str, name: str, arg: Any = None) -> str:
        handle = self._handle(workflow_id)
        timeout = self.update_timeout
        with control_errors(workflow_id):
            try:
                if arg is None:
                    answer = await handle.execute_update(name, result_type=str, rpc_timeout=timeout)
                else:
                    answer = await handle.execute_update(
                        name, arg, result_type=str, rpc_timeout=timeout
                    )
            except WorkflowUpdateRPCTimeoutOrCancelledError:
                raise ControlRejected(
                    f"run {workflow_id} did not answer {name!r} within "
                    f"{timeout.total_seconds():g}s: is a worker running on its task queue? "
                    "(the request may still take effect when one starts)"
                ) from None
            return str(answer)

    async def pause(self, workflow_id: str) -> str:
        """No new step starts until `resume`; running ones finish. Returns what happened.

        Raises:
            RunNotFound: no such run.
            ControlRejected: already paused, or the run has ended.
        """
        return await self._update(workflow_id, control.PAUSE)

    async def resume(self, workflow_id: str) -> str:
        """Let a paused run start steps again. Raises like `pause`."""
        return await self._update(workflow_id, control.RESUME)

    async def cancel_step(self, workflow_id: str, step: str, comment: str | None = None) -> str:
        """End one step CANCELLED (its running work is cancelled); its `on_failure` applies.

        Raises:
            RunNotFound: no such run.
            ControlRejected: an unknown step, or one that has already ended.
        """
        return await self._update(
            workflow_id, control.CANCEL_STEP, StepRequest(step=step, comment=comment)
        )

    async def approve(self, workflow_id: str, step: str, comment: str | None = None) -> str:
        """Approve a waiting approval step. Raises `ControlRejected` if it is not waiting."""
        return await self._update(
            workflow_id, control.APPROVE, StepRequest(step=step, comment=comment)
        )

    async def reject(self, workflow_id: str, step: str, comment: str | None = None) -> str:
        """Reject a waiting approval step: it fails (type `Rejected`) and `on_failure` applies."""
        return await self._update(
            workflow_id, control.REJECT, StepRequest(step=step, comment=comment)
        )

    async def give_input(self, workflow_id: str, step: str, value: Any) -> str:
        """Give a waiting input step its value; `ControlRejected` says why a value does not fit."""
        return await self._update(workflow_id, control.INPUT, StepInput(step=step, value=value))

    async def cancel(self, workflow_id: str) -> None:
        """Cancel the whole run: running work is cancelled, no step starts, it ends CANCELED.

        Raises:
            RunNotFound: no such run.
            ControlRejected: the run has already ended.
        """
        summary = await self.describe(workflow_id)  # Temporal accepts cancelling an ended run
        if summary.closed:
            raise ControlRejected(f"run {workflow_id} has already ended ({summary.status})")
        with control_errors(workflow_id):
            await self._handle(workflow_id).cancel()

    async def terminate(self, workflow_id: str, reason: str | None = None) -> None:
        """End the run at once, without its workflow code running (unlike `cancel`)."""
        with control_errors(workflow_id):
            await self._handle(workflow_id).terminate(reason=reason)


__all__ = [
    "ControlRejected",
    "PipelineError",
    "PipelineRun",
    "RunNotFound",
    "RunSummary",
    "StepflowClient",
]
