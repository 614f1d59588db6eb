"""Worker tuning: model calls and heavy tools on task queues of their own, the model queue's
rate limit shared by all its workers, concurrency limits, and settings checked at start.

Where an activity ran is read from the run's history on the real server: the queue it was
scheduled on (ActivityTaskScheduled) and the worker that took it (ActivityTaskStarted).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import structlog
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from stepflow.client.api import StepflowClient
from stepflow.client.schedules import PipelineSchedules
from stepflow.runtime.routing import RoutingError, has_pollers, served_queues
from stepflow.runtime.settings import Settings
from stepflow.worker import WORKER_READY_LINE, build_workers, load_settings
from stepflow.workflows.models import PipelineInput, StepStatus
from tests.conftest import TEST_TOOL_MODULES
from tests.support.control_tools import eventually
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, text, tool_calls
from tests.support.processes import ROOT, process_env, start_worker, wait_for_log


@pytest.fixture
def routed(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test's settings with model calls and the `record` tool on queues of their own."""
    monkeypatch.setenv("STEPFLOW_MODEL_TASK_QUEUE", f"{settings.task_queue}-models")
    monkeypatch.setenv("STEPFLOW_TOOL_TASK_QUEUES", f"record={settings.task_queue}-heavy")
    return Settings()


@asynccontextmanager
async def running(workers: Iterable[Worker]) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        yield


@dataclass(frozen=True)
class Ran:
    """One activity as its workflow's history tells it."""

    kind: str
    queue: str
    identity: str
    """Of the worker that took it."""
    scheduled_at: datetime
    started_at: datetime


async def ran(client: Client, *workflow_ids: str) -> list[Ran]:
    found = []
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        scheduled: dict[int, HistoryEvent] = {}
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[event.event_id] = event
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = event.activity_task_started_event_attributes
                cause = scheduled[started.scheduled_event_id]
                attributes = cause.activity_task_scheduled_event_attributes
                found.append(
                    Ran(
                        attributes.activity_type.name,
                        attributes.task_queue.name,
                        started.identity,
                        cause.event_time.ToDatetime(),
                        event.event_time.ToDatetime(),
                    )
                )
    return found


async def workflow_task_identities(client: Client, workflow_id: str) -> set[str]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return {
        event.workflow_task_started_event_attributes.identity
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    }


async def test_model_calls_and_heavy_tools_run_on_their_own_queues_and_workers(
    temporal_env: WorkflowEnvironment,
    temporal_client: Client,
    routed: Settings,
    model_server: ScriptedModelServer,
    journal: str,
    tmp_path: Path,
) -> None:
    main, models = routed.task_queue, f"{routed.task_queue}-models"
    heavy = f"{routed.task_queue}-heavy"
    # The model and heavy-tool queues in a worker process of their own, as on other machines.
    env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_TOOL_MODULES=TEST_TOOL_MODULES,
        STEPFLOW_TASK_QUEUE=main,
        STEPFLOW_MODEL_TASK_QUEUE=models,
        STEPFLOW_TOOL_TASK_QUEUES=f"record={heavy}",
        STEPFLOW_WORKER_SERVE=f"models,tools:{heavy}",
    )
    log = tmp_path / "worker.log"
    remote = start_worker(env, log)
    try:
        await wait_for_log(log, WORKER_READY_LINE, remote, timeout=60)
        ready = log.read_text()
        assert f"{models}: model calls" in ready and f"{heavy}: tools record" in ready
        assert f"{main}:" not in ready

        model_server.play(
            tool_calls(("record", {"journal": journal, "value": "from the agent"})), text("done")
        )
        spec = pipeline(
            step("heavy", "record", args={"journal": journal, "value": "big"}),
            step("light", "record_sync", args={"journal": journal, "value": "small"}),
            agent("think", tools=["record"], input="go", depends_on=["heavy"]),
        )
        stepflow = StepflowClient(temporal_client, settings=routed)
        here = routed.model_copy(update={"worker_serve": ["workflows"]})
        async with running(build_workers(temporal_client, here)):
            run = await stepflow.start_pipeline(spec)
            result = await stepflow.get_result(run.workflow_id)
    finally:
        remote.terminate()
        remote.wait(30)

    assert [r.status for r in result.steps] == [StepStatus.SUCCEEDED] * 3, result
    child = f"{run.workflow_id}/think"
    activities = await ran(temporal_client, run.workflow_id, child)
    remotely = f"{remote.pid}@"
    assert sorted((a.kind, a.queue, a.identity.startswith(remotely)) for a in activities) == [
        ("model_call", models, True),
        ("model_call", models, True),
        ("tool_record", heavy, True),
        ("tool_record", heavy, True),
        ("tool_record_sync", main, False),
    ]
    for a in activities:  # a worker's identity names its queue
        assert a.identity.endswith(f"/{a.queue}"), a
    local = f"{temporal_client.identity}/{main}"
    assert await workflow_task_identities(temporal_client, run.workflow_id) == {local}
    assert await workflow_task_identities(temporal_client, child) == {local}


async def dispatch_spread(
    temporal_client: Client, settings: Settings, calls: int
) -> tuple[timedelta, set[str]]:
    """Run `calls` agent steps at once; from the first model call scheduled to the last started."""
    spec = pipeline(*(agent(f"a{n}", input="go") for n in range(calls)), max_concurrency=calls)
    stepflow = StepflowClient(temporal_client, settings=settings)
    async with running(build_workers(temporal_client, settings)):
        run = await stepflow.start_pipeline(spec)
        result = await stepflow.get_result(run.workflow_id)
    assert all(r.status is StepStatus.SUCCEEDED for r in result.steps), result
    model_calls = await ran(temporal_client, *(f"{run.workflow_id}/a{n}" for n in range(calls)))
    assert len(model_calls) == calls
    first = min(a.scheduled_at for a in model_calls)
    return max(a.started_at for a in model_calls) - first, {a.queue for a in model_calls}


async def test_the_model_queue_dispatches_no_faster_than_its_rate_limit(
    temporal_client: Client, routed: Settings, model_server: ScriptedModelServer
) -> None:
    rate, calls = 4.0, 12
    model_server.respond_with(lambda request: text("ok"))
    # The same calls without the limit, on a queue of their own, measured side by side: on a
    # loaded machine both are slower, and only the limit makes the difference.
    free_queue = f"{routed.model_task_queue}-free"
    free = routed.model_copy(update={"model_task_queue": free_queue})
    unlimited, queues = await dispatch_spread(temporal_client, free, calls)
    assert queues == {free_queue}
    limited_settings = routed.model_copy(update={"model_calls_per_second": rate})
    limited, queues = await dispatch_spread(temporal_client, limited_settings, calls)
    assert queues == {routed.model_task_queue}

    # The server splits the limit over the queue's partitions (4 by default), each a token
    # bucket: 4 calls may start at once, the other 8 take 2 s at 4/s. Its buckets are not
    # exact, so three quarters of that, and at least a second more than without the limit.
    ideal = timedelta(seconds=(calls - 4) / rate)
    assert limited >= ideal * 0.75, (limited, unlimited)
    assert limited - unlimited >= timedelta(seconds=1), (limited, unlimited)


async def test_a_run_waits_for_a_worker_on_its_model_queue_and_the_start_says_so(
    temporal_client: Client, routed: Settings, model_server: ScriptedModelServer
) -> None:
    model_server.respond_with(lambda request: text("ok"))
    stepflow = StepflowClient(temporal_client, settings=routed)
    main_only = routed.model_copy(update={"worker_serve": ["workflows"]})
    models_only = routed.model_copy(update={"worker_serve": ["models"]})
    async with running(build_workers(temporal_client, main_only)):
        with structlog.testing.capture_logs() as logs:
            run = await stepflow.start_pipeline(pipeline(agent("a", input="go")))
        warnings = [e for e in logs if e["event"] == "task_queue_without_workers"]
        assert [(w["task_queue"], w["runs"]) for w in warnings] == [
            (routed.model_task_queue, "model calls")
        ]
        async with running(build_workers(temporal_client, models_only)):
            result = await stepflow.get_result(run.workflow_id)
            assert result.output("a") == "ok"
            queue = routed.model_task_queue or ""
            await eventually(  # the worker's first poll reaches the server within ms
                lambda: has_pollers(temporal_client, queue),
                lambda polled: bool(polled),
                "a poller on the model queue",
            )
            with structlog.testing.capture_logs() as logs:
                again = await stepflow.start_pipeline(pipeline(agent("a", input="go")))
            assert not [e for e in logs if e["event"] == "task_queue_without_workers"]
            assert (await stepflow.get_result(again.workflow_id)).output("a") == "ok"


async def test_schedules_start_runs_with_the_routing(
    temporal_client: Client, routed: Settings
) -> None:
    schedules = PipelineSchedules(StepflowClient(temporal_client, settings=routed))
    schedule_id = f"tuning-{routed.task_queue}"
    await schedules.create(
        pipeline(step("s", "record_sync", args={"journal": "-"})),
        every=timedelta(hours=1),
        schedule_id=schedule_id,
    )
    try:
        described = await temporal_client.get_schedule_handle(schedule_id).describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        [started] = await temporal_client.data_converter.decode(action.args, [PipelineInput])
        assert started.routing is not None
        assert started.routing.model_task_queue == routed.model_task_queue
        assert started.routing.tool_task_queues == {"record": f"{routed.task_queue}-heavy"}
    finally:
        await schedules.delete(schedule_id)


async def test_concurrency_and_the_rate_limit_reach_the_workers(
    temporal_client: Client, routed: Settings
) -> None:
    tuned = routed.model_copy(
        update={
            "max_concurrent_workflow_tasks": 7,
            "max_concurrent_activities": 5,
            "model_calls_per_second": 2.5,
        }
    )
    configs = {
        w.task_queue: w.config(active_config=True) for w in build_workers(temporal_client, tuned)
    }
    main, models = tuned.task_queue, f"{tuned.task_queue}-models"
    heavy = f"{tuned.task_queue}-heavy"
    assert list(configs) == [main, models, heavy]
    assert configs[main].get("max_concurrent_workflow_tasks") == 7
    assert {c.get("max_concurrent_activities") for c in configs.values()} == {5}
    assert configs[models].get("max_task_queue_activities_per_second") == 2.5
    assert configs[main].get("max_task_queue_activities_per_second") is None
    assert [bool(c.get("workflows")) for c in configs.values()] == [True, False, False]
    names = {
        queue: {activity._Definition.must_from_callable(a).name for a in c.get("activities", [])}
        for queue, c in configs.items()
    }
    # Each worker also has one dynamic activity (no name): it refuses a tool it lacks, clearly.
    assert all(None in queue_names for queue_names in names.values())
    names = {queue: queue_names - {None} for queue, queue_names in names.items()}
    assert names[models] == {"model_call"}
    assert names[heavy] == {"tool_record"}
    # The main queue keeps every activity: runs started before the routing still find theirs.
    assert {"model_call", "tool_record", "tool_record_sync"} <= names[main]
    # A process that serves the model queue too answers model calls that land on the main one;
    # one that does not refuses them (next test), rather than answer without the rate limit.
    # (Another queue: one process may build only one worker per queue.)
    main_only = tuned.model_copy(update={"worker_serve": ["workflows"], "task_queue": f"{main}-b"})
    [refusing] = build_workers(temporal_client, main_only)
    [model_call] = [
        a
        for a in refusing.config(active_config=True).get("activities", [])
        if activity._Definition.must_from_callable(a).name == "model_call"
    ]
    assert model_call.__name__ == "misrouted_model_call"


async def test_a_model_call_of_a_run_started_without_routing_fails_clearly(
    temporal_client: Client, routed: Settings, model_server: ScriptedModelServer
) -> None:
    main_only = routed.model_copy(update={"worker_serve": ["workflows"]})
    unrouted = routed.model_copy(update={"model_task_queue": None, "tool_task_queues": {}})
    async with running(build_workers(temporal_client, main_only)):
        result = await StepflowClient(temporal_client, settings=unrouted).run_pipeline(
            pipeline(agent("ask", "Say hi."))
        )
    record = result.step("ask")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelCallMisrouted"
    assert f"model calls run on '{routed.model_task_queue}'" in (record.error or "")
    assert not model_server.requests  # never answered: not by the provider, not offline


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"STEPFLOW_TOOL_TASK_QUEUES": "record"},
            'STEPFLOW_TOOL_TASK_QUEUES: expected "tool=queue',
        ),
        ({"STEPFLOW_TOOL_TASK_QUEUES": '{"record": '}, "STEPFLOW_TOOL_TASK_QUEUES: not valid JSON"),
        ({"STEPFLOW_TOOL_TASK_QUEUES": "record=q-main"}, "which is the main queue"),
        (
            {"STEPFLOW_MODEL_TASK_QUEUE": "q-main"},
            "STEPFLOW_MODEL_TASK_QUEUE: 'q-main' is the main",
        ),
        ({"STEPFLOW_MODEL_CALLS_PER_SECOND": "5"}, "needs STEPFLOW_MODEL_TASK_QUEUE"),
        (
            {"STEPFLOW_MODEL_TASK_QUEUE": "m", "STEPFLOW_MODEL_CALLS_PER_SECOND": "0"},
            "greater than 0",
        ),
        (
            {"STEPFLOW_MAX_CONCURRENT_WORKFLOW_TASKS": "1"},
            "STEPFLOW_MAX_CONCURRENT_WORKFLOW_TASKS:",
        ),
    ],
)
def test_invalid_settings_name_the_variable_in_one_line(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_TASK_QUEUE", "q-main")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RoutingError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith("invalid settings: ") and "\n" not in message
    assert expected in message


@pytest.mark.parametrize(
    ("serve", "expected"),
    [
        (["gpus"], "unknown entry 'gpus'"),
        (["tools:nowhere"], "no tool is routed to 'nowhere'"),
        (["models"], "STEPFLOW_MODEL_TASK_QUEUE is unset"),
    ],
)
def test_serving_a_queue_that_nothing_is_routed_to_is_an_error(
    serve: list[str], expected: str
) -> None:
    settings = Settings(task_queue="q", tool_task_queues={"record": "heavy"}, worker_serve=serve)
    with pytest.raises(RoutingError, match=expected):
        served_queues(settings, ["record"])


def test_routing_an_unregistered_tool_is_an_error() -> None:
    settings = Settings(task_queue="q", tool_task_queues={"recrod": "heavy"})
    with pytest.raises(RoutingError, match="not registered: recrod"):
        served_queues(settings, ["record"])


async def test_the_worker_refuses_bad_settings_with_one_line_and_exit_2() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        "--serve",
        "models",
        cwd=ROOT,
        env=process_env("127.0.0.1:1", STEPFLOW_MODEL_CALLS_PER_SECOND="ten"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 2 and len(lines) == 1, stderr.decode()
    assert lines[0].startswith("stepflow worker: invalid settings: STEPFLOW_MODEL_CALLS_PER_SECOND")
