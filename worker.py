"""The Stepflow worker: runs pipeline and agent workflows, model calls and tools.

    python worker.py          # connect per TEMPORAL_* settings (default localhost:7233)
    python worker.py --dev    # first start the embedded dev server if nothing listens on 7233

Tools come from the built-ins and the modules named in STEPFLOW_TOOL_MODULES.
SIGINT or SIGTERM stops polling, lets running activities finish (up to the
graceful timeout), and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities import progress
from activities.model_call import model_call
from activities.model_endpoint import ModelNotConfigured, resolve_endpoint
from activities.registry import ToolDefinition, load_tool_modules
from activities.tool_activities import tool_activities
from runtime import exit_now
from runtime.connection import ConnectionFailed, connect
from runtime.devserver import WORKER_READY_LINE, DevServerError, ensure_dev_server
from runtime.logging import configure_logging
from runtime.settings import Settings, get_settings
from workflows.agent import AgentStepWorkflow
from workflows.pipeline import PipelineWorkflow

log = structlog.get_logger("stepflow.worker")

WORKFLOWS = [PipelineWorkflow, AgentStepWorkflow]


def build_worker(
    client: Client,
    settings: Settings,
    *,
    tools: list[ToolDefinition] | None = None,
    task_queue: str | None = None,
) -> Worker:
    """A worker for every Stepflow workflow and every registered tool.

    Args:
        client: Connected with the pydantic data converter (`runtime.connection.connect`).
        settings: Stepflow settings (tool modules, concurrency).
        tools: The tools to serve; by default the built-ins plus STEPFLOW_TOOL_MODULES.
        task_queue: Overrides `settings.task_queue` (tests use one queue each).
    """
    if tools is None:
        tools = load_tool_modules(settings.tool_modules)
    progress.install(client)  # retried activities report through it, sync tools too
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=[model_call, *tool_activities(tools)],
        # Sync tools run here; sized like the activity slots so none waits for a thread.
        activity_executor=ThreadPoolExecutor(max_workers=settings.max_concurrent_activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=10),
        # A cancel reaches an activity only in the answer to one of its heartbeats; the SDK's
        # 30 s default would let a cancelled tool run on for half a minute.
        default_heartbeat_throttle_interval=timedelta(seconds=2),
        max_heartbeat_throttle_interval=timedelta(seconds=5),
    )


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
    client = await connect()
    tools = load_tool_modules(settings.tool_modules)
    worker = build_worker(client, settings, tools=tools)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        log.info(
            WORKER_READY_LINE,
            task_queue=worker.task_queue,
            namespace=client.namespace,
            tools=[t.name for t in tools],
            default_model=_describe_default_model(settings),
        )
        await stop.wait()
        log.info("stepflow worker stopping: running activities get up to 10 s to finish")
    log.info("stepflow worker stopped")


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
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings)
    try:
        if args.dev and ensure_dev_server(settings):
            log.info("started the Temporal dev server", ui=settings.ui_url)
        asyncio.run(serve(settings))
    except (ConnectionFailed, DevServerError, ImportError) as err:
        log.error(str(err))
        return 2
    return 0


if __name__ == "__main__":
    exit_now(main())
