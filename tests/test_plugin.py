"""Wiring through `StepflowPlugin`: one plugin for client, worker and replayer, no module state.

Each worker gets what its activities need (its client, for retry reports) through the plugin,
so two workers in one process never share it; and a client from `connect()` carries the same
plugin, so it reads what workers wrote, encrypted or not.
"""

from __future__ import annotations

import ast
import base64
import json
import warnings
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from stepflow.client.api import StepflowClient
from stepflow.runtime.connection import connect
from stepflow.runtime.plugin import WORKFLOWS, StepflowPlugin
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker, build_workers
from stepflow.workflows.control import STEP_PROGRESS
from stepflow.workflows.models import PipelineSpec, PipelineStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
KEY = base64.b64encode(b"k" * 32).decode()
MARKER = "MARK-PLUGIN-private-9f3a"


@pytest.fixture
def connected(
    temporal_env: WorkflowEnvironment,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The test's settings, for clients from `connect()` to the test server."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    monkeypatch.setenv("STEPFLOW_PAYLOAD_DIR", str(tmp_path / "payloads"))
    return Settings()


def two_steps() -> PipelineSpec:
    """A tool step and an agent step (the offline model) that reads its output."""
    return pipeline(
        step("fetch", "echo", args={"value": MARKER}),
        agent("write", depends_on=["fetch"], input="{{ steps.fetch.output }}"),
    )


async def test_a_worker_made_by_the_plugin_the_client_carries_runs_tools_and_agents(
    connected: Settings,
) -> None:
    client = await connect(settings=connected)
    async with Worker(client, task_queue=connected.task_queue):  # nothing else to wire
        result = await StepflowClient(client, settings=connected).run_pipeline(two_steps())
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("fetch") == MARKER
    assert result.step("write").output


async def test_build_workers_from_a_connected_client_configure_each_worker_once(
    connected: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_MODEL_TASK_QUEUE", f"{connected.task_queue}-models")
    routed = Settings()
    client = await connect(settings=routed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the SDK's "same plugin type ... may run twice"
        workers = build_workers(client, routed)
    for worker in workers:
        config = worker.config(active_config=True)
        names = [activity._Definition.must_from_callable(a).name for a in config["activities"]]
        assert len(names) == len(set(names)), names
        assert config.get("interceptors") == []  # tracing is off: the client's plugin adds none
    main, models = (w.config(active_config=True) for w in workers)
    assert len(main["workflows"]) == 3 and not models["workflows"]
    main_names = {activity._Definition.must_from_callable(a).name for a in main["activities"]}
    assert {"model_call", "tool_echo", "tool_flaky"} <= main_names


async def test_workers_report_retries_through_their_own_clients(
    temporal_client: Client, settings: Settings, journal: str
) -> None:
    """Two workers in one process, each with its own client: each report comes from its own.

    With a reporter set for the whole process, the second worker built would send the first
    one's reports too.
    """
    runs: dict[str, str] = {}
    queues = {name: f"{settings.task_queue}-{name}" for name in ("a", "b")}
    address = temporal_client.service_client.config.target_host
    workers = {
        name: build_worker(
            await Client.connect(
                address, identity=f"client-{name}", data_converter=temporal_client.data_converter
            ),
            settings,
            task_queue=queue,
        )
        for name, queue in queues.items()
    }
    spec = pipeline(
        step(
            "flaky",
            "flaky",
            args={"journal": journal, "succeed_on": 2},
            retry={"initial_interval": "100ms"},
        ),
        # Keeps the run open, so that the report lands in its history.
        {"id": "hold", "kind": "approval", "depends_on": ["flaky"]},
    )
    async with workers["a"], workers["b"]:
        for name, queue in queues.items():
            stepflow = StepflowClient(
                temporal_client, settings=settings.model_copy(update={"task_queue": queue})
            )
            runs[name] = (await stepflow.start_pipeline(spec)).workflow_id

        async def reporters(workflow_id: str) -> list[str]:
            history = await temporal_client.get_workflow_handle(workflow_id).fetch_history()
            return [
                event.workflow_execution_signaled_event_attributes.identity
                for event in history.events
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                and event.workflow_execution_signaled_event_attributes.signal_name == STEP_PROGRESS
            ]

        for name, workflow_id in runs.items():

            async def reported(workflow_id: str = workflow_id) -> bool:
                return bool(await reporters(workflow_id))

            await wait_until(reported, f"run {name}'s retry report")
            assert set(await reporters(workflow_id)) == {f"client-{name}"}
            await temporal_client.get_workflow_handle(workflow_id).terminate("test done")


@pytest.mark.parametrize(
    "module",
    [
        "activities/progress.py",
        "activities/model_call.py",
        "activities/tool_activities.py",
        "activities/misrouted.py",
        "runtime/plugin.py",
        "worker.py",
    ],
)
def test_no_module_the_worker_wires_keeps_state_of_its_own(module: str) -> None:
    """What an activity needs is held by its object: no `global` for a worker to set."""
    tree = ast.parse((ROOT / module).read_text())
    assert not [node.names for node in ast.walk(tree) if isinstance(node, ast.Global)]


async def test_a_client_from_connect_reads_what_an_encrypting_worker_wrote(
    temporal_client: Client, connected: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_ENCRYPTION_KEY", KEY)
    keyed = Settings()
    async with build_worker(await connect(settings=keyed), keyed):
        reader = StepflowClient(await connect(settings=keyed), settings=keyed)
        run = await reader.start_pipeline(two_steps())
        result = await reader.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("fetch") == MARKER
    # What the server keeps is encrypted: a client without the key sees none of it.
    history = await temporal_client.get_workflow_handle(run.workflow_id).fetch_history()
    assert MARKER not in history.to_json()
    assert MARKER.encode() not in b"".join(
        base64.b64decode(p) for p in _payload_data(json.loads(history.to_json()))
    )


def _payload_data(node: object) -> list[str]:
    """Every payload's base64 `data` in a history as JSON."""
    if isinstance(node, dict):
        found = [node["data"]] if isinstance(node.get("data"), str) else []
        return found + [d for value in node.values() for d in _payload_data(value)]
    if isinstance(node, list):
        return [d for item in node for d in _payload_data(item)]
    return []


async def test_the_replayer_with_the_plugin_replays_committed_histories(
    settings: Settings,
) -> None:
    replayer = Replayer(workflows=[], plugins=[StepflowPlugin(settings)])
    for name in ("tools-dag", "agent-scripted.review", "run-control"):
        saved = json.loads((ROOT / "tests" / "histories" / f"{name}.json").read_text())
        history = WorkflowHistory.from_json(saved["workflow_id"], saved["history"])
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{name}: {result.replay_failure}"


def test_activity_and_workflow_names_are_unchanged() -> None:
    """Committed histories name these types: the classes must register the same names."""
    from stepflow.activities.misrouted import MisroutedModelCalls
    from stepflow.activities.model_call import ModelCallActivity
    from stepflow.activities.registry import load_tool_modules
    from stepflow.activities.tool_activities import ToolActivities

    names = {
        activity._Definition.must_from_callable(fn).name
        for fn in (ModelCallActivity().model_call, MisroutedModelCalls("m").misrouted_model_call)
    }
    assert names == {"model_call"}
    tools = load_tool_modules(["tests.support.tools"])
    assert [
        activity._Definition.must_from_callable(fn).name
        for fn in ToolActivities(tools).activities()
    ] == [f"tool_{t.name}" for t in tools]
    assert [workflow._Definition.must_from_class(w).name for w in WORKFLOWS] == [
        "stepflow_pipeline",
        "stepflow_agent_step",
        "stepflow_budget_ledger",
    ]
