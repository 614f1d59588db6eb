"""Task routing: which task queue each kind of activity goes to, and which queues a worker serves.

Model calls and heavy tools may have task queues of their own (`STEPFLOW_MODEL_TASK_QUEUE`,
`STEPFLOW_TOOL_TASK_QUEUES`), so each kind scales on its own machines. The client stamps the
routing into each run's input (`TaskRouting`, also for schedules), the workflows send each
activity where it says, and every worker process serves the queues `STEPFLOW_WORKER_SERVE`
names. Client and workers must therefore read the same routing settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from stepflow.runtime.settings import Settings
from stepflow.workflows.models import AgentStep, PipelineSpec, TaskRouting, ToolStep

log = structlog.get_logger("stepflow.routing")

WORKFLOWS = "workflows"
"""The main queue: pipeline and agent workflows, and every activity not routed elsewhere."""
MODELS = "models"
"""The model queue: `model_call` only, under the queue-wide rate limit."""
TOOLS = "tools"
"""Every tool queue; `tools:QUEUE` is one of them."""


class RoutingError(ValueError):
    """Routing or serving settings that cannot work; the message is one line naming the setting."""


@dataclass(frozen=True)
class QueueService:
    """One task queue a worker process serves, and what it runs there."""

    task_queue: str
    role: str
    """`workflows`, `models` or `tools`."""
    tools: tuple[str, ...]
    """The tools whose activities it runs (the main queue: every tool)."""
    activities_per_second: float | None = None
    """The queue-wide dispatch limit the server enforces (the model queue only)."""

    @classmethod
    def main(cls, task_queue: str, tool_names: Collection[str]) -> QueueService:
        """The main queue: workflows, and every activity (routed runs send some elsewhere)."""
        return cls(task_queue, WORKFLOWS, tuple(tool_names))

    @property
    def workflows(self) -> bool:
        return self.role == WORKFLOWS

    @property
    def model_calls(self) -> bool:
        return self.role in (WORKFLOWS, MODELS)

    def describe(self, settings: Settings) -> str:
        """For the worker's start-up line: the queue, what runs there, and its limits."""
        if self.role == WORKFLOWS:
            what = f"workflows (max {settings.max_concurrent_workflow_tasks} tasks) and activities"
        elif self.role == MODELS:
            what = "model calls"
        else:
            what = "tools " + ", ".join(self.tools)
        limits = f"max {settings.max_concurrent_activities} at once"
        if self.activities_per_second is not None:
            limits += f", {self.activities_per_second:g}/s across the queue"
        return f"{self.task_queue}: {what}, {limits}"


def task_routing(settings: Settings) -> TaskRouting | None:
    """The routing a run starts with; None when nothing is routed (runs start as they did)."""
    if not settings.model_task_queue and not settings.tool_task_queues:
        return None
    return TaskRouting(
        model_task_queue=settings.model_task_queue,
        tool_task_queues=dict(settings.tool_task_queues),
    )


def served_queues(settings: Settings, tool_names: Collection[str]) -> list[QueueService]:
    """The queues this worker process serves (`STEPFLOW_WORKER_SERVE`; empty: all configured).

    The main queue registers every activity, not only the unrouted ones: a run started before
    the routing was set (or by a client without it) still finds its model calls and tools there.

    Raises:
        RoutingError: an unknown entry, a queue nothing is routed to, or a routed tool that is
            not registered.
    """
    unknown = sorted(set(settings.tool_task_queues) - set(tool_names))
    if unknown:
        raise RoutingError(
            f"STEPFLOW_TOOL_TASK_QUEUES routes tools that are not registered: {', '.join(unknown)}"
            " (check the names, and STEPFLOW_TOOL_MODULES)"
        )
    tool_queues: dict[str, list[str]] = {}
    for tool, queue in settings.tool_task_queues.items():
        tool_queues.setdefault(queue, []).append(tool)

    wanted: list[str] = []
    for entry in settings.worker_serve or [WORKFLOWS, MODELS, TOOLS]:
        if entry == WORKFLOWS:
            wanted.append(WORKFLOWS)
        elif entry == MODELS:
            if settings.model_task_queue:
                wanted.append(MODELS)
            elif settings.worker_serve:
                raise RoutingError(
                    "STEPFLOW_WORKER_SERVE names models, but STEPFLOW_MODEL_TASK_QUEUE is unset "
                    "(model calls then run on the main queue: serve workflows)"
                )
        elif entry == TOOLS:
            if not tool_queues and settings.worker_serve:
                raise RoutingError(
                    "STEPFLOW_WORKER_SERVE names tools, but STEPFLOW_TOOL_TASK_QUEUES routes none"
                )
            wanted.extend(f"{TOOLS}:{queue}" for queue in tool_queues)
        elif entry.startswith(f"{TOOLS}:"):
            queue = entry.removeprefix(f"{TOOLS}:")
            if queue not in tool_queues:
                routed = ", ".join(sorted(tool_queues)) or "none"
                raise RoutingError(
                    f"STEPFLOW_WORKER_SERVE names {entry}, but no tool is routed to {queue!r} "
                    f"(STEPFLOW_TOOL_TASK_QUEUES; tool queues: {routed})"
                )
            wanted.append(entry)
        else:
            raise RoutingError(
                f"STEPFLOW_WORKER_SERVE: unknown entry {entry!r} "
                "(expected workflows, models, tools or tools:QUEUE)"
            )

    services: list[QueueService] = []
    for entry in dict.fromkeys(wanted):  # once each, in the order given
        if entry == WORKFLOWS:
            services.append(QueueService.main(settings.task_queue, tool_names))
        elif entry == MODELS:
            assert settings.model_task_queue
            services.append(
                QueueService(settings.model_task_queue, MODELS, (), settings.model_calls_per_second)
            )
        else:
            queue = entry.removeprefix(f"{TOOLS}:")
            services.append(QueueService(queue, TOOLS, tuple(tool_queues[queue])))
    return services


def explain_settings_error(err: ValidationError | SettingsError) -> str:
    """One line for bad `STEPFLOW_*` settings, naming each variable (pydantic's text is a page)."""
    if isinstance(err, SettingsError):
        return f"invalid settings: {err}"
    problems = []
    for error in err.errors():
        name = "STEPFLOW_" + "_".join(str(part) for part in error["loc"][:1]).upper()
        detail = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {detail}")
    return "invalid settings: " + "; ".join(problems)


def routed_queues(spec: PipelineSpec, routing: TaskRouting | None) -> dict[str, str]:
    """The routed queues a run of `spec` will use, each with what it runs there."""
    if routing is None:
        return {}
    used: dict[str, list[str]] = {}
    for step in spec.steps:
        if isinstance(step, AgentStep) and routing.model_task_queue:
            used.setdefault(routing.model_task_queue, []).append("model calls")
        tools = [step.tool] if isinstance(step, ToolStep) else []
        tools += step.tools if isinstance(step, AgentStep) else []
        for tool in tools:
            if tool in routing.tool_task_queues:
                used.setdefault(routing.tool_task_queues[tool], []).append(f"tool {tool}")
    return {queue: ", ".join(dict.fromkeys(what)) for queue, what in used.items()}


_served: set[tuple[str, str]] = set()
"""(namespace, queue) seen with pollers: not asked again by this process."""


async def has_pollers(client: Client, task_queue: str) -> bool | None:
    """Whether a worker polled `task_queue` for activities lately (None: the server did not say).

    The server remembers pollers for a few minutes, so a worker that just stopped still counts.
    """
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    )
    try:
        response = await client.workflow_service.describe_task_queue(
            request, timeout=timedelta(seconds=5)
        )
    except RPCError as err:  # e.g. an API key without the permission: not worth failing a start
        log.debug("describe_task_queue_failed", task_queue=task_queue, detail=err.message)
        return None
    return bool(response.pollers)


async def warn_unserved(client: Client, spec: PipelineSpec, routing: TaskRouting | None) -> None:
    """One warning per routed queue of the run that no worker polls: the run would wait there."""
    queues = {
        queue: what
        for queue, what in routed_queues(spec, routing).items()
        if (client.namespace, queue) not in _served
    }
    answers = await asyncio.gather(*(has_pollers(client, queue) for queue in queues))
    for (queue, what), polled in zip(queues.items(), answers, strict=True):
        if polled:
            _served.add((client.namespace, queue))
        elif polled is False:
            log.warning(
                "task_queue_without_workers",
                task_queue=queue,
                runs=what,
                hint="the run waits there until a worker serves it: start one with the same "
                "STEPFLOW_* routing settings (python worker.py --serve models / tools:QUEUE)",
            )
