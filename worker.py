"""The Stepflow worker: runs pipeline and agent workflows, model calls and tools.

    python worker.py          # connect per TEMPORAL_* settings (default localhost:7233)
    python worker.py --dev    # first start the embedded dev server if nothing listens on 7233
    python worker.py --serve models            # only the model queue (STEPFLOW_MODEL_TASK_QUEUE)
    python worker.py --serve workflows,tools:heavy

By default a worker serves every configured queue: the main one (workflows, and
every activity sent there), the model queue and each tool queue, if routed
(STEPFLOW_MODEL_TASK_QUEUE, STEPFLOW_TOOL_TASK_QUEUES). `--serve` (or
STEPFLOW_WORKER_SERVE) picks some, so each kind scales on its own machines.
Tools come from the built-ins and the modules named in STEPFLOW_TOOL_MODULES,
and from the MCP servers of STEPFLOW_MCP_SERVERS (connected when first needed).
SIGINT or SIGTERM stops polling, lets running activities finish (up to the
graceful timeout), and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import urllib.parse
from collections.abc import Sequence
from contextlib import AsyncExitStack

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError
from temporalio.client import Client
from temporalio.worker import Worker

from stepflow.activities.model_endpoint import ModelNotConfigured, resolve_endpoint
from stepflow.activities.registry import ToolDefinition, load_tool_modules
from stepflow.runtime import exit_now
from stepflow.runtime.connection import ConnectionFailed, connect
from stepflow.runtime.devserver import WORKER_READY_LINE, DevServerError, ensure_dev_server
from stepflow.runtime.encryption import describe_encryption
from stepflow.runtime.logging import configure_logging
from stepflow.runtime.payload_storage import describe_store, payload_dir
from stepflow.runtime.plugin import WORKFLOWS, StepflowPlugin, stepflow_worker
from stepflow.runtime.routing import (
    MODELS,
    QueueService,
    RoutingError,
    explain_settings_error,
    served_queues,
)
from stepflow.runtime.settings import Settings
from stepflow.runtime.telemetry import (
    TelemetryError,
    configure_tracing,
    describe,
    metrics_runtime,
    shutdown_tracing,
)

__all__ = ["WORKER_READY_LINE", "WORKFLOWS", "build_worker", "build_workers", "load_settings"]

log = structlog.get_logger("stepflow.worker")


def build_worker(
    client: Client,
    settings: Settings,
    *,
    tools: list[ToolDefinition] | None = None,
    task_queue: str | None = None,
) -> Worker:
    """A worker for every Stepflow workflow and every registered tool, on the main queue.

    Build it on the event loop it will run on: retried activities report through it.

    Args:
        client: A client to Temporal; with Stepflow's data converter (`runtime.connection.connect`,
            or one with `runtime.plugin.StepflowPlugin`).
        settings: Stepflow settings (tool modules, concurrency).
        tools: The tools to serve; by default the built-ins plus STEPFLOW_TOOL_MODULES.
        task_queue: Overrides `settings.task_queue` (tests use one queue each).
    """
    if tools is None:
        tools = load_tool_modules(settings.tool_modules)
    queue = QueueService.main(task_queue or settings.task_queue, [t.name for t in tools])
    return _queue_worker(client, settings, queue, tools, serves_models=False)


def build_workers(
    client: Client, settings: Settings, *, tools: list[ToolDefinition] | None = None
) -> list[Worker]:
    """One worker per queue this process serves (`STEPFLOW_WORKER_SERVE`; default: all).

    Raises:
        RoutingError: the serve or routing settings cannot work.
    """
    if tools is None:
        tools = load_tool_modules(settings.tool_modules)
    queues = served_queues(settings, [t.name for t in tools])
    models = any(queue.role == MODELS for queue in queues)
    return [_queue_worker(client, settings, q, tools, serves_models=models) for q in queues]


def _queue_worker(
    client: Client,
    settings: Settings,
    queue: QueueService,
    tools: list[ToolDefinition],
    *,
    serves_models: bool,
) -> Worker:
    """The worker of one queue; `serves_models`: this process also serves the model queue."""
    plugin = StepflowPlugin(settings, tools=tools, queue=queue, serves_models=serves_models)
    return stepflow_worker(client, plugin, queue.task_queue)


def _describe_default_model(settings: Settings) -> str:
    """Say at start-up whether agent steps will reach a real model, without naming any key."""
    try:
        endpoint = resolve_endpoint(None, settings)
    except ModelNotConfigured as err:
        return f"not usable: {err}"
    if endpoint.offline:
        return "offline (built-in, deterministic; set OPENAI_API_KEY or OPENAI_BASE_URL)"
    where = "api.openai.com"
    if endpoint.base_url:  # without any user:password@ or ?token= it may carry
        url = urllib.parse.urlsplit(endpoint.base_url)
        where = f"{url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}{url.path}"
    return f"{endpoint.name} at {where}"


async def serve(settings: Settings) -> None:
    tools = load_tool_modules(settings.tool_modules)
    queues = served_queues(settings, [t.name for t in tools])  # bad settings: before connecting
    runtime = metrics_runtime(settings)  # a taken port stops the worker here, not later
    configure_tracing(settings, worker=True)
    client = await connect(settings=settings, runtime=runtime)
    models = any(queue.role == MODELS for queue in queues)
    workers = [_queue_worker(client, settings, q, tools, serves_models=models) for q in queues]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        log.info(
            WORKER_READY_LINE,
            task_queue=workers[0].task_queue,
            queues=[queue.describe(settings) for queue in queues],
            namespace=client.namespace,
            tools=[t.name for t in tools],
            # Where each is, never its arguments, environment or headers (they may hold keys).
            mcp_servers=[f"{n} ({c.describe()})" for n, c in settings.mcp_servers.items()],
            default_model=_describe_default_model(settings),
            payload_store=describe_store(settings),
            encryption=describe_encryption(settings),
            **describe(settings),
        )
        if settings.payload_store == "local" and (
            settings.model_task_queue or settings.tool_task_queues
        ):
            # Routed queues usually mean several machines, which a local directory does not span.
            log.warning(
                "large payloads go to a local directory; workers on other machines cannot read "
                "them: use STEPFLOW_PAYLOAD_STORE=s3 or a directory every worker mounts",
                payload_dir=str(payload_dir(settings)),
            )
        await stop.wait()
        log.info("stepflow worker stopping: running activities get up to 10 s to finish")
    log.info("stepflow worker stopped")


def load_settings(serve: Sequence[str] | None = None) -> Settings:
    """The settings from the environment, `--serve` overriding STEPFLOW_WORKER_SERVE.

    Raises:
        RoutingError: a setting is invalid (one line naming it).
    """
    try:
        return Settings() if serve is None else Settings(worker_serve=list(serve))
    except (ValidationError, SettingsError) as err:
        raise RoutingError(explain_settings_error(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="start the embedded Temporal dev server (SQLite under .stepflow/, UI on :8233) "
        "if nothing listens on localhost:7233",
    )
    parser.add_argument(
        "--serve",
        metavar="QUEUES",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        help="the queues to serve, comma-separated: workflows, models, tools, tools:QUEUE "
        "(default: STEPFLOW_WORKER_SERVE, else every configured queue)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.serve)
    except RoutingError as err:  # logging is configured by these very settings: plain stderr
        print(f"stepflow worker: {err}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        if args.dev and ensure_dev_server(settings):
            log.info("started the Temporal dev server", ui=settings.ui_url)
        asyncio.run(serve(settings))
    except (ConnectionFailed, DevServerError, ImportError, RoutingError, TelemetryError) as err:
        log.error(str(err))
        return 2
    finally:
        shutdown_tracing(settings)  # export the spans still queued
    return 0


if __name__ == "__main__":
    exit_now(main())
