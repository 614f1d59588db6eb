"""`StepflowPlugin`: everything a Temporal client, worker or replayer needs to run Stepflow.

One object, built from `Settings`, carries both sides, so a client and the
workers built from it cannot disagree:

- client (and replayer): the data converter (`runtime.payload_storage`: pydantic
  JSON, the payload store, encryption) and the tracing interceptor;
- worker: Stepflow's workflows on the main queue, the sandbox they run in
  (`workflows.sandbox`), the activities of the queue's role (model calls, tools,
  or the refusal of misrouted model calls), each built with the worker's retry
  reporter, and the worker's tuning from the settings.

`runtime.connection.connect` puts it on every client, so `Worker(client,
task_queue=...)` is a Stepflow worker, its role read from the routing settings.
`worker.build_worker` and `worker.build_workers` give each worker a plugin for
its queue instead, and the one the client carries then leaves that worker alone.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import cached_property
from typing import Any

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin
from temporalio.service import ConnectConfig, ServiceClient
from temporalio.worker import ReplayerConfig, Worker, WorkerConfig

from stepflow.activities.registry import ToolDefinition, load_tool_modules
from stepflow.runtime import clean_exit
from stepflow.runtime.payload_storage import stepflow_data_converter
from stepflow.runtime.routing import MODELS, TOOLS, QueueService, served_queues
from stepflow.runtime.settings import Settings
from stepflow.runtime.telemetry import tracing_interceptors
from stepflow.workflows.agent import AgentStepWorkflow
from stepflow.workflows.budget import BudgetLedgerWorkflow
from stepflow.workflows.pipeline import PipelineWorkflow
from stepflow.workflows.sandbox import workflow_runner

PLUGIN_NAME = "stepflow"

WORKFLOWS: list[type] = [PipelineWorkflow, AgentStepWorkflow, BudgetLedgerWorkflow]

WORKFLOW_FAILURE_TYPES: tuple[type[BaseException], ...] = ()
"""Exceptions that fail a run, rather than its workflow task, on every Stepflow workflow.

None so far: each workflow names its own (`failure_exception_types` of its
`workflow.defn`). Classes from Stepflow's modules would not work here anyway: in
the sandbox (`STEPFLOW_WORKFLOW_SANDBOX=1`) a workflow imports its own copy of
each, which `isinstance` does not match.
"""

GRACEFUL_SHUTDOWN = timedelta(seconds=10)
"""How long running activities may finish after a worker is asked to stop."""


class StepflowPlugin(SimplePlugin):
    """Stepflow's converter, interceptors, workflows and activities for clients and workers."""

    def __init__(
        self,
        settings: Settings,
        *,
        tools: Sequence[ToolDefinition] | None = None,
        queue: QueueService | None = None,
        serves_models: bool | None = None,
    ) -> None:
        """The plugin of a client, and of the workers and replayers made with it.

        Args:
            settings: Stepflow's settings: payload store, encryption, tracing, routing, tuning.
            tools: The tools its workers serve; by default the built-ins and STEPFLOW_TOOL_MODULES.
            queue: The queue a worker serves and its role; by default read from the worker's
                task queue and the routing settings (an unrouted queue is a main queue).
            serves_models: Whether this process also serves the model queue, so that its main
                queue answers model calls rather than refusing them; by default as
                STEPFLOW_WORKER_SERVE says.

        Raises:
            TelemetryError: tracing is asked for but cannot start.
        """
        self.settings = settings
        self.queue = queue
        self._given_tools = list(tools) if tools is not None else None
        self._serves_models = serves_models
        super().__init__(
            PLUGIN_NAME,
            data_converter=lambda _given: self.converter,
            interceptors=tracing_interceptors(settings),
            workflow_runner=workflow_runner(settings.workflow_sandbox),
            workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES,
        )

    async def connect_service_client(
        self,
        config: ConnectConfig,
        next: Callable[[ConnectConfig], Awaitable[ServiceClient]],
    ) -> ServiceClient:
        """Connect, and have the program wait at exit for the SDK's threads (`clean_exit`)."""
        clean_exit.install()
        return await next(config)

    @cached_property
    def converter(self) -> DataConverter:
        """The data converter, made once, when first needed.

        Raises:
            PayloadStoreError: unusable payload store settings.
            EncryptionError: a key file that cannot be used.
        """
        return stepflow_data_converter(self.settings)

    @cached_property
    def tools(self) -> list[ToolDefinition]:
        """The tools its workers serve.

        Raises:
            ImportError: a module of STEPFLOW_TOOL_MODULES cannot be imported.
        """
        if self._given_tools is not None:
            return self._given_tools
        return load_tool_modules(self.settings.tool_modules)

    def queue_for(self, task_queue: str) -> QueueService:
        """What a worker on `task_queue` runs: the given queue, else per the routing settings."""
        if self.queue is not None:
            return self.queue
        names = [t.name for t in self.tools]
        if task_queue == self.settings.model_task_queue:
            return QueueService(task_queue, MODELS, (), self.settings.model_calls_per_second)
        routed = tuple(t for t, q in self.settings.tool_task_queues.items() if q == task_queue)
        if routed:
            return QueueService(task_queue, TOOLS, routed)
        return QueueService.main(task_queue, names)

    @property
    def serves_models(self) -> bool:
        """Whether this process serves the model queue (always, when there is none)."""
        if self._serves_models is None:
            queues = served_queues(self.settings, [t.name for t in self.tools])
            self._serves_models = any(queue.role == MODELS for queue in queues)
        return self._serves_models

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        """A Stepflow worker for the config's task queue (see `queue_for`)."""
        if any(
            isinstance(plugin, StepflowPlugin) and plugin is not self
            for plugin in config.get("plugins", [])
        ):
            return config  # carried by the client; the worker's own plugin configures it
        config = super().configure_worker(config)
        client = config["client"]
        if _traced(client):
            # A client's tracing interceptor traces its workers too (one made by the caller,
            # not by this plugin): every span once.
            config["interceptors"] = [
                i for i in config.get("interceptors", []) if i not in (self.interceptors or ())
            ]
        queue = self.queue_for(config["task_queue"])
        settings = self.settings
        served = [t for t in self.tools if t.name in queue.tools]
        activities = self._activities(client, queue, served)
        config["activities"] = [*config.get("activities", []), *activities]
        if queue.workflows:
            config["workflows"] = [*config.get("workflows", []), *WORKFLOWS]
        # Which queue's worker ran an activity shows in its history (ActivityTaskStarted).
        config["identity"] = f"{client.identity}/{queue.task_queue}"
        if served:
            # Sync tools run here; sized like the activity slots so none waits for a thread.
            config["activity_executor"] = ThreadPoolExecutor(
                max_workers=settings.max_concurrent_activities
            )
        config["max_concurrent_activities"] = settings.max_concurrent_activities
        config["max_concurrent_workflow_tasks"] = (
            settings.max_concurrent_workflow_tasks if queue.workflows else None
        )
        # Enforced by the server for the whole queue, whichever worker polls.
        config["max_task_queue_activities_per_second"] = queue.activities_per_second
        config["graceful_shutdown_timeout"] = GRACEFUL_SHUTDOWN
        # A cancel reaches an activity only in the answer to one of its heartbeats; the SDK's
        # 30 s default would let a cancelled tool run on for half a minute.
        config["default_heartbeat_throttle_interval"] = timedelta(seconds=2)
        config["max_heartbeat_throttle_interval"] = timedelta(seconds=5)
        return config

    def _activities(
        self, client: Client, queue: QueueService, served: list[ToolDefinition]
    ) -> list[Callable[..., Any]]:
        """The activities of `queue`, each with the worker's retry reporter."""
        # Imported here: clients (every `stepflow` command) need not load the openai library.
        from stepflow.activities.misrouted import MisroutedModelCalls
        from stepflow.activities.model_call import ModelCallActivity
        from stepflow.activities.progress import ProgressReporter
        from stepflow.activities.tool_activities import ToolActivities
        from stepflow.activities.unknown import UnknownActivities

        # Sync tools report from executor threads: through this client, on this loop.
        progress = ProgressReporter(client, asyncio.get_running_loop())
        activities: list[Callable[..., Any]] = []
        model_queue = self.settings.model_task_queue
        if queue.workflows and model_queue and not self.serves_models:
            # Model calls belong on their queue; one that lands here was started without routing.
            activities.append(MisroutedModelCalls(model_queue).misrouted_model_call)
        elif queue.model_calls:
            activities.append(ModelCallActivity(progress).model_call)
        # Any other activity type: a tool this worker lacks fails at once, saying so.
        unknown = UnknownActivities(queue.task_queue, [t.name for t in served])
        tools = ToolActivities(served, progress)
        fallback: Callable[..., Any] = unknown.unknown_activity
        if self.settings.mcp_servers and (queue.workflows or queue.model_calls):
            # MCP servers' tools are found at call time, so they run in the dynamic activity.
            from stepflow.activities.mcp.activity import McpToolActivities
            from stepflow.activities.mcp.hub import McpHub

            hub = McpHub(self.settings.mcp_servers).register()
            fallback = McpToolActivities(hub, tools, unknown).mcp_tool
        if queue.workflows:  # result cache lookups go to the run's own queue
            from stepflow.activities.result_cache import CacheActivities

            activities.extend(CacheActivities(self.settings).activities())
        return [*activities, *tools.activities(), fallback]

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        """Run the worker; then close what its activities opened (model API connections)."""
        try:
            await super().run_worker(worker, next)
        finally:
            for fn in worker.config(active_config=True).get("activities", []):
                close = getattr(getattr(fn, "__self__", None), "aclose", None)
                if close is not None:
                    await close()

    def configure_replayer(self, config: ReplayerConfig) -> ReplayerConfig:
        """The converter, the sandbox and Stepflow's workflows, to replay their histories."""
        config = super().configure_replayer(config)
        config["workflows"] = [*config.get("workflows", []), *WORKFLOWS]
        return config


def _traced(client: Client) -> bool:
    interceptors = client.config(active_config=True).get("interceptors", [])
    return any(isinstance(i, TracingInterceptor) for i in interceptors)


def stepflow_worker(client: Client, plugin: StepflowPlugin, task_queue: str) -> Worker:
    """A worker on `task_queue` configured by `plugin`, whether or not the client carries one.

    When the client carries a StepflowPlugin (`runtime.connection.connect`), it steps
    aside for the worker's own; the SDK's warning that both are present says nothing
    new then.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The same plugin type", UserWarning)
        return Worker(client, task_queue=task_queue, plugins=[plugin])
