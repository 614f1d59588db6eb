"""Stepflow's per-step overhead against a hand-written Temporal workflow.

    python bench/overhead.py [--steps N] [--repeat R] [--servers memory,file]
    # defaults: N=200, R=3, both servers

One process starts one Temporal dev server per kind asked for (tuned as
`tests/conftest.py` does) and, on each, one worker serving both workflows with
the same activities and thread pool as `worker.build_worker`. The kinds of
server:

- memory: in-memory SQLite, what the tests run against;
- file: a SQLite file with the pragmas every file-backed dev server Stepflow
  starts gets (WAL, synchronous=normal unless STEPFLOW_DEV_SQLITE_SYNCHRONOUS
  says full), as `make demo` runs;
- file-sqlite-defaults: a SQLite file with no pragmas, SQLite's rollback journal
  where every commit waits for the disk (how file-backed servers ran before).

It then runs, after one untimed warm-up of each, baseline, pipeline, baseline,
pipeline, ... R times each, going round the servers, so both kinds and all
servers share the machine's noise:

- pipeline: a `stepflow_pipeline` run of N sequential `echo` steps, step i
  depending on step i-1. The first step echoes the constant "ping", each later
  step gets `{{ steps.<prev>.output }}`, so every step renders a reference
  (the common case in real pipelines) yet every activity carries the same
  small payload.
- baseline: `bench_baseline`, defined here with the default sandbox like
  `PipelineWorkflow`, calls the very same `tool_echo` activity N times in a
  loop, passing each output on to the next call, with the same `ToolCallInput`
  shape (step id, tool, args, idempotency key), the same start-to-close
  timeout and the same retry policy as the pipeline's steps (checked at
  start). It sets no activity summary and keeps no step records: that
  bookkeeping is part of what the pipeline costs.

Durations are server-side: `close_time - start_time` from `describe()`, so
client polling is not counted. Besides the headline ratio of medians it prints
each pipeline run's ratio to the baseline run just before it, which is less
sensitive to drift over the session. The target (from the issue) is a ratio of
medians, pipeline / hand-written, of at most 1.10 at N=200. This is a
measurement, not a test: the exit code is 0 either way.

For one timed run of each kind it also prints the history's event counts per
event type and a per-step breakdown of where the time goes, read from the
events' timestamps. All of this comes once per server; a last table puts the
servers' medians side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import structlog
    import temporalio
    from temporalio.api.enums.v1 import EventType
    from temporalio.api.history.v1 import HistoryEvent
    from temporalio.client import Client, WorkflowHandle
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from stepflow.activities.progress import ProgressReporter
    from stepflow.activities.registry import ToolDefinition, load_tool_modules
    from stepflow.activities.tool_activities import ToolActivities
    from stepflow.client.api import StepflowClient
    from stepflow.runtime.devserver import start_ephemeral_environment
    from stepflow.runtime.settings import Settings
    from stepflow.worker import WORKFLOWS
    from stepflow.workflows.models import (
        DEFAULT_START_TO_CLOSE,
        PipelineSpec,
        ToolCallInput,
        ToolCallOutput,
        ToolStep,
        effective_retry,
        effective_timeout,
        tool_activity_name,
    )
    from stepflow.workflows.sandbox import workflow_runner

BASELINE_WORKFLOW = "bench_baseline"
TOOL = "echo"
SEED = "ping"
TARGET_RATIO = 1.10

SERVERS = {
    "memory": "in memory (the tests' servers)",
    "file": "SQLite file, WAL + synchronous=normal (make demo, stepflow dev start)",
    "file-sqlite-defaults": "SQLite file, SQLite's rollback journal (before WAL)",
}
"""The kinds of dev server the bench can run against, and what each stands for."""

# What a pipeline step gets when neither it nor the pipeline sets retry or timeout
# (BUILTIN_RETRY, DEFAULT_START_TO_CLOSE); `check_same_activity_options` verifies it.
START_TO_CLOSE = DEFAULT_START_TO_CLOSE
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=None,
    maximum_attempts=3,
    non_retryable_error_types=None,
)


def step_id(index: int) -> str:
    return f"s{index:04d}"


@workflow.defn(name=BASELINE_WORKFLOW, sandboxed=True)  # the default, as PipelineWorkflow
class BaselineWorkflow:
    """The minimal hand-written equivalent: N sequential calls of the echo activity."""

    @workflow.run
    async def run(self, steps: int) -> Any:
        info = workflow.info()
        value: Any = SEED
        for index in range(steps):
            sid = step_id(index)
            output = await workflow.execute_activity(
                tool_activity_name(TOOL),
                ToolCallInput(
                    step_id=sid,
                    tool=TOOL,
                    args={"value": value},
                    idempotency_key=f"{info.workflow_id}/{info.first_execution_run_id}/{sid}",
                ),
                result_type=ToolCallOutput,
                start_to_close_timeout=START_TO_CLOSE,
                retry_policy=RETRY,
            )
            value = output.output
        return value


def bench_spec(steps: int) -> PipelineSpec:
    """N echo steps in a chain, each passing its predecessor's output on."""
    raw: list[dict[str, Any]] = []
    for index in range(steps):
        if index == 0:
            raw.append({"id": step_id(0), "kind": "tool", "tool": TOOL, "args": {"value": SEED}})
        else:
            prev = step_id(index - 1)
            raw.append(
                {
                    "id": step_id(index),
                    "kind": "tool",
                    "tool": TOOL,
                    "depends_on": [prev],
                    "args": {"value": f"{{{{ steps.{prev}.output }}}}"},
                }
            )
    return PipelineSpec.model_validate({"name": "bench-overhead", "steps": raw})


def check_same_activity_options(spec: PipelineSpec) -> None:
    """Fail loudly if the baseline's timeout or retry policy drifted from the pipeline's."""
    step = spec.steps[-1]
    assert isinstance(step, ToolStep)
    timeout = effective_timeout(step, spec.defaults)
    retry = effective_retry(step, spec.defaults)
    expected = (
        timeout.start_to_close,
        timeout.schedule_to_close,
        timeout.heartbeat,
        retry.initial_interval,
        retry.backoff_coefficient,
        retry.max_interval,
        retry.max_attempts,
        retry.non_retryable_errors or None,
    )
    actual = (
        START_TO_CLOSE,
        None,
        None,
        RETRY.initial_interval,
        RETRY.backoff_coefficient,
        RETRY.maximum_interval,
        RETRY.maximum_attempts,
        RETRY.non_retryable_error_types,
    )
    if expected != actual:
        raise SystemExit(
            f"baseline activity options {actual} differ from the pipeline's {expected}"
        )


def make_worker(
    client: Client, settings: Settings, tools: list[ToolDefinition], queue: str
) -> Worker:
    """`worker.build_worker`, plus the baseline workflow, in the sandbox workers use."""
    return Worker(
        client,
        task_queue=queue,
        workflows=[*WORKFLOWS, BaselineWorkflow],
        workflow_runner=workflow_runner(),
        activities=ToolActivities(tools, ProgressReporter(client)).activities(),
        activity_executor=ThreadPoolExecutor(max_workers=settings.max_concurrent_activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


@dataclass
class Run:
    kind: str
    handle: WorkflowHandle[Any, Any]
    server_ms: float
    wall_ms: float
    events: int
    history_bytes: int
    steps: int

    @property
    def per_step_ms(self) -> float:
        return self.server_ms / self.steps


async def finish(kind: str, handle: WorkflowHandle[Any, Any], wall_start: float, steps: int) -> Run:
    wall_ms = (time.perf_counter() - wall_start) * 1000
    desc = await handle.describe()
    if desc.close_time is None:
        raise RuntimeError(f"{kind} run {handle.id} has not closed")
    server_ms = (desc.close_time - desc.start_time).total_seconds() * 1000
    return Run(
        kind=kind,
        handle=handle,
        server_ms=server_ms,
        wall_ms=wall_ms,
        events=desc.history_length,
        history_bytes=desc.raw_info.history_size_bytes,
        steps=steps,
    )


async def run_baseline(client: Client, queue: str, steps: int) -> Run:
    wall_start = time.perf_counter()
    handle = await client.start_workflow(
        BaselineWorkflow.run, steps, id=f"bench-baseline-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    result = await handle.result()
    if result != SEED:
        raise RuntimeError(f"baseline returned {result!r}")
    return await finish("baseline", handle, wall_start, steps)


async def run_pipeline(stepflow: StepflowClient, spec: PipelineSpec, queue: str) -> Run:
    wall_start = time.perf_counter()
    run = await stepflow.start_pipeline(spec, task_queue=queue)
    result = await stepflow.get_result(run.workflow_id, run.run_id)
    if result.status != "SUCCEEDED" or result.output(spec.steps[-1].id) != SEED:
        raise RuntimeError(f"pipeline run {run.workflow_id} ended {result.status}: {result.error}")
    handle = stepflow.temporal.get_workflow_handle(run.workflow_id, run_id=run.run_id)
    return await finish("pipeline", handle, wall_start, len(spec.steps))


# ---------------------------------------------------------------------------
# History evidence


def _ms(event: HistoryEvent) -> float:
    return event.event_time.seconds * 1000 + event.event_time.nanos / 1e6


@dataclass
class Breakdown:
    """Per-step time (ms), summed over the run and divided by N, by phase."""

    wft_queue: float = 0.0  # workflow task scheduled -> started (matching, poll)
    wft_worker: float = 0.0  # workflow task started -> completed (worker runs workflow code)
    act_queue: float = 0.0  # activity scheduled -> started
    act_run: float = 0.0  # activity started -> completed
    gap: float = 0.0  # everything else between start and close
    wft_count: int = 0
    wft_worker_max: float = 0.0


async def history_evidence(run: Run) -> tuple[Counter[str], Breakdown]:
    history = await run.handle.fetch_history()
    events = list(history.events)
    counts: Counter[str] = Counter(
        EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events
    )
    by_id = {e.event_id: e for e in events}
    b = Breakdown()
    for e in events:
        et = e.event_type
        if et == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            sched = by_id[e.workflow_task_started_event_attributes.scheduled_event_id]
            b.wft_queue += _ms(e) - _ms(sched)
        elif et == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            started = by_id[e.workflow_task_completed_event_attributes.started_event_id]
            spent = _ms(e) - _ms(started)
            b.wft_worker += spent
            b.wft_worker_max = max(b.wft_worker_max, spent)
            b.wft_count += 1
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            sched = by_id[e.activity_task_started_event_attributes.scheduled_event_id]
            b.act_queue += _ms(e) - _ms(sched)
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            started = by_id[e.activity_task_completed_event_attributes.started_event_id]
            b.act_run += _ms(e) - _ms(started)
    total = _ms(events[-1]) - _ms(events[0])
    b.gap = total - b.wft_queue - b.wft_worker - b.act_queue - b.act_run
    n = run.steps
    b.wft_queue, b.wft_worker, b.act_queue, b.act_run, b.gap = (
        b.wft_queue / n,
        b.wft_worker / n,
        b.act_queue / n,
        b.act_run / n,
        b.gap / n,
    )
    return counts, b


# ---------------------------------------------------------------------------


def quiet_logs() -> None:
    """The echo activity logs two info lines per call (both kinds alike): drop them."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)


def cores() -> str:
    total = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    return f"{usable} usable of {total}"


@dataclass
class Server:
    """One dev server of the session, its worker's clients, and the runs timed on it."""

    kind: str
    client: Client
    stepflow: StepflowClient
    runs: list[Run] = field(default_factory=list)
    evidence: dict[str, tuple[Counter[str], Breakdown]] = field(default_factory=dict)

    def median(self, kind: str) -> float:
        return statistics.median(r.per_step_ms for r in self.runs if r.kind == kind)


async def start_server(kind: str, scratch: Path) -> WorkflowEnvironment:
    """A throwaway dev server of `kind` (see SERVERS), its file (if any) in `scratch`."""
    if kind == "memory":
        return await start_ephemeral_environment()
    # None: the pragmas every file-backed Stepflow server gets; {}: none, SQLite's defaults.
    pragmas: dict[str, str] | None = {} if kind == "file-sqlite-defaults" else None
    return await start_ephemeral_environment(db_file=scratch / f"{kind}.db", pragmas=pragmas)


async def bench(steps: int, repeat: int, kinds: list[str]) -> None:
    settings = Settings()
    quiet_logs()
    spec = bench_spec(steps)
    check_same_activity_options(spec)
    tools = load_tool_modules(settings.tool_modules)
    queue = f"bench-{uuid.uuid4().hex[:8]}"

    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="stepflow-bench-") as scratch:
        async with contextlib.AsyncExitStack() as stack:
            for kind in kinds:
                env = await start_server(kind, Path(scratch))
                stack.push_async_callback(env.shutdown)
                await stack.enter_async_context(make_worker(env.client, settings, tools, queue))
                servers.append(
                    Server(kind, env.client, StepflowClient(env.client, settings=settings))
                )
            for server in servers:
                await run_baseline(server.client, queue, steps)
                await run_pipeline(server.stepflow, spec, queue)
            for _ in range(repeat):
                for server in servers:
                    server.runs.append(await run_baseline(server.client, queue, steps))
                    server.runs.append(await run_pipeline(server.stepflow, spec, queue))
            for server in servers:
                server.evidence = {
                    kind: await history_evidence(
                        next(r for r in reversed(server.runs) if r.kind == kind)
                    )
                    for kind in ("baseline", "pipeline")
                }

    print()
    print(
        f"python {platform.python_version()}, temporalio {temporalio.__version__}, "
        f"cores: {cores()}, {platform.machine()} {platform.system()}"
    )
    print(
        f"N={steps} sequential echo steps, R={repeat} timed runs of each kind per server "
        f"(after 1 untimed warm-up each), alternating, round the servers"
    )
    for server in servers:
        report(server, steps)
    if len(servers) > 1:
        side_by_side(servers)


def report(server: Server, steps: int) -> None:
    """Every run on one server, its medians, ratios, history and breakdown."""
    runs = server.runs
    print()
    print(f"== server: {server.kind}: {SERVERS[server.kind]}")
    print()
    print(
        f"{'#':>2}  {'kind':<9} {'server ms':>10} {'ms/step':>8} {'wall ms':>9} "
        f"{'events':>7} {'history KB':>10}"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"{i:>2}  {r.kind:<9} {r.server_ms:>10.1f} {r.per_step_ms:>8.2f} {r.wall_ms:>9.1f} "
            f"{r.events:>7} {r.history_bytes / 1024:>10.1f}"
        )

    medians = {kind: server.median(kind) for kind in ("baseline", "pipeline")}
    print()
    for kind, value in medians.items():
        print(f"median {kind:<9} {value:.2f} ms/step")
    pairs = [p.per_step_ms / b.per_step_ms for b, p in zip(runs[::2], runs[1::2], strict=True)]
    print(
        "pairwise ratios (each pipeline run / the baseline run just before it): "
        + " ".join(f"{x:.2f}" for x in pairs)
        + f", median {statistics.median(pairs):.2f}"
    )

    counts_b, bd_b = server.evidence["baseline"]
    counts_p, bd_p = server.evidence["pipeline"]
    print()
    print("history events of the last timed run of each kind")
    print(f"  {'event type':<32} {'baseline':>9} {'pipeline':>9}")
    for name in sorted(set(counts_b) | set(counts_p)):
        print(f"  {name:<32} {counts_b[name]:>9} {counts_p[name]:>9}")
    print(f"  {'total':<32} {sum(counts_b.values()):>9} {sum(counts_p.values()):>9}")
    print()
    print("where a step's time goes (ms per step, from event timestamps)")
    print(f"  {'phase':<44} {'baseline':>9} {'pipeline':>9}")
    rows = [
        ("workflow task scheduled -> started", bd_b.wft_queue, bd_p.wft_queue),
        ("workflow task started -> completed (worker)", bd_b.wft_worker, bd_p.wft_worker),
        ("activity scheduled -> started", bd_b.act_queue, bd_p.act_queue),
        ("activity started -> completed", bd_b.act_run, bd_p.act_run),
        ("rest (between events)", bd_b.gap, bd_p.gap),
        ("slowest single workflow task (ms)", bd_b.wft_worker_max, bd_p.wft_worker_max),
    ]
    for label, b, p in rows:
        print(f"  {label:<44} {b:>9.2f} {p:>9.2f}")

    ratio = medians["pipeline"] / medians["baseline"]
    print()
    print(
        f"overhead ratio (pipeline / hand-written) at N={steps}: {ratio:.2f} "
        f"(target <= {TARGET_RATIO:.2f})"
    )
    if ratio > TARGET_RATIO:
        print("TARGET MISSED")


def side_by_side(servers: list[Server]) -> None:
    """Median ms/step of each kind of run on each server, and each server's range."""
    width = max(20, *(len(s.kind) for s in servers))
    print()
    print("== per-step cost by server (median ms/step [min-max] of the timed runs)")
    print(f"  {'run':<9} " + " ".join(f"{s.kind:>{width}}" for s in servers))
    for kind in ("baseline", "pipeline"):
        cells = []
        for server in servers:
            values = [r.per_step_ms for r in server.runs if r.kind == kind]
            cell = f"{server.median(kind):6.2f} [{min(values):5.2f}-{max(values):5.2f}]"
            cells.append(f"{cell:>{width}}")
        print(f"  {kind:<9} " + " ".join(cells))
    first = servers[0]
    for server in servers[1:]:
        ratios = " ".join(
            f"{kind} {server.median(kind) / first.median(kind):.2f}"
            for kind in ("baseline", "pipeline")
        )
        print(f"  {server.kind} / {first.kind}: {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200, help="steps per run (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each kind (default 3)")
    parser.add_argument(
        "--servers",
        default="memory,file",
        help=f"comma-separated kinds of dev server, of {', '.join(SERVERS)} (default memory,file)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeat < 1:
        parser.error("--steps and --repeat must be at least 1")
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SERVERS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        parser.error(
            f"--servers: give each of {', '.join(SERVERS)} at most once, got {args.servers!r}"
        )
    asyncio.run(bench(args.steps, args.repeat, kinds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
