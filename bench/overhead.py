"""Stepflow's per-step overhead against a hand-written Temporal workflow.

    python bench/overhead.py [--steps N] [--repeat R] [--servers memory,file]
    # defaults: N=200, R=3, both servers (--mode in-process, the default)
    python bench/overhead.py --mode product [--steps 100,10000] [--repeat 5]
    python bench/overhead.py --mode both    # both, and their ratios side by side

In process (`--mode in-process`): one process starts one Temporal dev server
per kind asked for (tuned as `tests/conftest.py` does) and, on each, one worker
serving both workflows with the same activities and thread pool as
`worker.build_worker`, both in the SDK's sandbox. The kinds of server:

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

On the product path (`--mode product`) Stepflow is measured as a user runs it:

- one dev server (`--product-server`, default file: WAL, as `make demo` starts
  it), tuned as the tests' (`runtime.devserver.start_ephemeral_environment`);
- the Stepflow worker is `python -m stepflow.worker` (what `python worker.py`
  runs) in its own process, in an empty project directory, with this process's
  environment less every STEPFLOW_* and TEMPORAL_* variable plus the server's
  address and its own STEPFLOW_TASK_QUEUE: the default settings (JSON logs on
  stderr, to a file; the local payload store; 100 activity threads; workflow
  code outside the SDK's sandbox; `--stepflow-sandbox on` puts it in);
- runs start as `stepflow run` starts them: `StepflowClient.start_pipeline` on a
  client from `runtime.connection.connect`, then `get_result`;
- the baseline is a minimal SDK worker in its own process
  (`bench/overhead_worker.py baseline`): N sequential no-op activities with the
  shape of a Stepflow tool call, continuing as new when the server suggests it,
  as a Stepflow run does, in the SDK's sandbox (its default; `--baseline-sandbox
  off`: outside it). `--tool sync` (default) is `echo` on both sides, a sync
  function in a thread pool; `--tool async` an async no-op on both sides.

For each N of `--steps` (e.g. 100,10000) it runs, after one untimed warm-up of
each kind, baseline, pipeline, ... `--repeat` times each (default 5), or
`--repeat-large` times (default 1: ~3 minutes a run) for N over 1,000. Times are
server-side, from the first run of a chain's start to its last run's close (at
10,000 steps a run continues as new some 15 times). For each run it also reads
the CPU time (/proc) the run's worker process and the dev server spent. It
prints each N's runs, the ratio of medians (target at N=100: 1.05), pairwise
ratios, the history's events and a per-step breakdown of the last runs from
their events' timestamps, and, for several N, the per-step cost at the largest
N over the smallest (target: within 10%).

Then, unless `--profile-runs 0`, both workers are restarted under cProfile
(`overhead_worker.py --profile`: one CPU-time profiler per thread, so the
workflow activations and sync activities the SDK runs in pool threads count;
the window opens after a warm-up, per N) and `--profile-runs` more runs of
each kind (default 2; 1 for N over 1,000) give, per step: the process's CPU,
named costs with what they call (workflow activations; in them publish,
details_markdown, StepCounter.count, set_current_details, search attributes,
live_status, scheduling, template rendering, the tool call; payload
decoding/encoding; sandbox imports of a new run; the activity side: the SDK's
handling, the tool's activity, get_settings, validation, telemetry; payload
storage; logging) and who runs the CPU (Stepflow's code, the SDK's sandbox,
converter, pydantic, logging, asyncio, ...), beside the baseline's. These runs
are not timed: the profiler slows what it watches. `--keep-profiles DIR` keeps
the pstats files (pipeline-N100.prof, ...) for `python -m pstats`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
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
    # Beside this script (sys.path[0] when it runs); nothing here may touch the file
    # system: the sandbox runs this module again for the in-process baseline.
    import overhead_worker as ow  # the product path's workers; registers echo_async
    import structlog
    import temporalio
    from temporalio.api.enums.v1 import EventType
    from temporalio.api.history.v1 import HistoryEvent
    from temporalio.client import (
        Client,
        WorkflowExecutionStatus,
        WorkflowHandle,
        WorkflowHistoryEventFilterType,
    )
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from stepflow.activities.progress import ProgressReporter
    from stepflow.activities.registry import ToolDefinition, load_tool_modules
    from stepflow.activities.tool_activities import ToolActivities
    from stepflow.client.api import StepflowClient
    from stepflow.runtime.connection import connect
    from stepflow.runtime.devserver import WORKER_READY_LINE, start_ephemeral_environment
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


def bench_spec(steps: int, tool: str = TOOL) -> PipelineSpec:
    """N `tool` (echo) steps in a chain, each passing its predecessor's output on."""
    raw: list[dict[str, Any]] = []
    for index in range(steps):
        if index == 0:
            raw.append({"id": step_id(0), "kind": "tool", "tool": tool, "args": {"value": SEED}})
        else:
            prev = step_id(index - 1)
            raw.append(
                {
                    "id": step_id(index),
                    "kind": "tool",
                    "tool": tool,
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
    wft_per_step: float = 0.0


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
    n = counts["ACTIVITY_TASK_COMPLETED"] or run.steps  # one run of a chain: its own steps
    b.wft_per_step = b.wft_count / n
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


async def bench(steps: int, repeat: int, kinds: list[str]) -> dict[str, float]:
    """The in-process measurement; the ratio of medians on each server."""
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
    ratios = {server.kind: report(server, steps) for server in servers}
    if len(servers) > 1:
        side_by_side(servers)
    return ratios


def report(server: Server, steps: int) -> float:
    """Every run on one server, its medians, ratios, history and breakdown; the ratio."""
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
    return ratio


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


# ---------------------------------------------------------------------------
# The product path: worker processes of their own, runs started as `stepflow run` starts them

PRODUCT_TARGET_RATIO = 1.05
SCALING_TARGET = 1.10
"""Per-step cost at the largest N over the cost at the smallest, at most (the issue's 10%)."""
LARGE = 1000
"""Past this many steps a run takes minutes: `--repeat-large` runs of each kind (default 1)."""
BENCH_DIR = Path(ow.__file__).parent
"""This directory, as Python found it (absolute: it is on sys.path as the script's)."""
WORKER_SCRIPT = BENCH_DIR / "overhead_worker.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads: Rust core included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK


def dev_server_pid() -> int | None:
    """The `temporal` process this process started (the dev server), if there is one."""
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "temporal":
                    return int(pid)
    return None


class WorkerProcess:
    """A worker in a process of its own, its output in a log file, ready once it says so."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.name = name
        self.log = log
        self.started_at = log.stat().st_size if log.exists() else 0
        """Where this process's output begins in the log (a restarted worker appends)."""
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_ms(self) -> float:
        return process_cpu_ms(self.pid)

    def tail(self) -> str:
        text = self.log.read_bytes()[self.started_at :].decode(errors="replace")
        return "\n".join(text.splitlines()[-20:])

    async def wait_for(self, text: str, after: int | None = None, within: float = 120) -> None:
        """Until `text` appears in the log past byte `after` (default: this process's output);
        fails if the process ends."""
        after = self.started_at if after is None else after
        deadline = time.monotonic() + within
        while text.encode() not in self.log.read_bytes()[after:]:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name}: no {text!r} within {within:.0f} s:\n{self.tail()}"
                )
            await asyncio.sleep(0.05)

    async def signal(self, sig: signal.Signals, then: str) -> None:
        """Send `sig` and wait until the worker logs `then`."""
        offset = self.log.stat().st_size
        self.process.send_signal(sig)
        await self.wait_for(then, after=offset)

    async def stop(self) -> None:
        """SIGTERM (the worker's graceful shutdown), then wait; SIGKILL after 30 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)


def worker_env(
    address: str, task_queue: str | None, tool: str, sandbox: bool = False
) -> dict[str, str]:
    """The environment of a worker process: this one's without STEPFLOW_* and TEMPORAL_*
    (a worker with the default settings), then the server's address and the queue, and
    STEPFLOW_WORKFLOW_SANDBOX=1 if `sandbox`."""
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("STEPFLOW_", "TEMPORAL_"))
    }
    env["TEMPORAL_ADDRESS"] = address
    env["TEMPORAL_NAMESPACE"] = "default"
    if task_queue is not None:
        env["STEPFLOW_TASK_QUEUE"] = task_queue
    if sandbox:
        env["STEPFLOW_WORKFLOW_SANDBOX"] = "1"
    if tool != TOOL:  # the async twin of echo, from overhead_worker.py
        env["STEPFLOW_TOOL_MODULES"] = "overhead_worker"
        env["STEPFLOW_IMPORT_PATH"] = str(BENCH_DIR)
    return env


@dataclass
class ProductRun(Run):
    """A run (a chain of runs, past continue-as-new) and what the processes spent on it."""

    chain: int = 1
    worker_cpu_ms: float = math.nan
    server_cpu_ms: float = math.nan

    @property
    def worker_cpu_per_step(self) -> float:
        return self.worker_cpu_ms / self.steps

    @property
    def server_cpu_per_step(self) -> float:
        return self.server_cpu_ms / self.steps


async def chain_timing(
    client: Client, workflow_id: str, run_id: str
) -> tuple[float, int, int, int]:
    """Server ms from the first run's start to the last one's close, events, bytes, runs."""
    start = None
    events = size = runs = 0
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        desc = await handle.describe()
        start = start or desc.start_time
        events += desc.history_length
        size += desc.raw_info.history_size_bytes
        runs += 1
        if desc.status != WorkflowExecutionStatus.CONTINUED_AS_NEW:
            if desc.close_time is None:
                raise RuntimeError(f"run {workflow_id}/{run_id} has not closed")
            return (desc.close_time - start).total_seconds() * 1000, events, size, runs
        async for event in handle.fetch_history_events(
            event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT
        ):
            attributes = event.workflow_execution_continued_as_new_event_attributes
            run_id = attributes.new_execution_run_id


@dataclass
class Meter:
    """Reads the CPU time of the worker processes and the dev server around each run."""

    workers: dict[str, WorkerProcess]
    server_pid: int | None

    def read(self, kind: str) -> tuple[float, float]:
        server = process_cpu_ms(self.server_pid) if self.server_pid else math.nan
        return self.workers[kind].cpu_ms(), server


async def timed(kind: str, meter: Meter, client: Client, steps: int, go: Any) -> ProductRun:
    """Run `go()` (start a run, wait for its end: workflow id, first run id) and measure it."""
    cpu0, server0 = meter.read(kind)
    wall_start = time.perf_counter()
    workflow_id, run_id = await go()
    wall_ms = (time.perf_counter() - wall_start) * 1000
    cpu1, server1 = meter.read(kind)
    server_ms, events, size, chain = await chain_timing(client, workflow_id, run_id)
    return ProductRun(
        kind=kind,
        handle=client.get_workflow_handle(workflow_id, run_id=run_id),
        server_ms=server_ms,
        wall_ms=wall_ms,
        events=events,
        history_bytes=size,
        steps=steps,
        chain=chain,
        worker_cpu_ms=cpu1 - cpu0,
        server_cpu_ms=server1 - server0,
    )


@dataclass
class Product:
    """The product-path session: clients, the workers' processes, what each N measured."""

    stepflow: StepflowClient
    plain: Client
    """A client with the SDK's default converter, as the baseline's worker has."""
    baseline_queue: str
    tool: str
    meter: Meter
    runs: dict[int, list[ProductRun]] = field(default_factory=dict)
    profiles: dict[int, dict[str, Profile]] = field(default_factory=dict)

    async def baseline(self, steps: int) -> ProductRun:
        async def go() -> tuple[str, str]:
            handle = await self.plain.start_workflow(
                ow.BASELINE_WORKFLOW,
                ow.Chain(steps, tool_activity_name(self.tool)),
                id=f"bench-baseline-{uuid.uuid4().hex[:8]}",
                task_queue=self.baseline_queue,
            )
            result = await handle.result(follow_runs=True)
            if result != SEED:
                raise RuntimeError(f"baseline returned {result!r}")
            return handle.id, handle.result_run_id or ""

        return await timed("baseline", self.meter, self.plain, steps, go)

    async def pipeline(self, spec: PipelineSpec) -> ProductRun:
        async def go() -> tuple[str, str]:
            run = await self.stepflow.start_pipeline(spec)  # what `stepflow run` calls
            result = await self.stepflow.get_result(run.workflow_id, run.run_id)
            if result.status != "SUCCEEDED" or result.output(spec.steps[-1].id) != SEED:
                raise RuntimeError(f"run {run.workflow_id} ended {result.status}: {result.error}")
            return run.workflow_id, run.run_id

        return await timed("pipeline", self.meter, self.stepflow.temporal, len(spec.steps), go)


def check_same_worker_options(settings: Settings) -> None:
    """Fail loudly if overhead_worker.py's activity options or pool drifted from Stepflow's."""
    pool = Settings.model_fields["max_concurrent_activities"].default
    if (ow.START_TO_CLOSE, ow.RETRY, ow.POOL_THREADS) != (START_TO_CLOSE, RETRY, pool):
        raise SystemExit(
            "overhead_worker.py's timeout, retry policy or pool differ from Stepflow's"
        )


async def product(
    steps_list: list[int],
    repeat: int,
    repeat_large: int,
    profile_runs: int,
    server_kind: str,
    tool: str,
    keep_profiles: Path | None = None,
    stepflow_sandbox: bool = False,
    baseline_sandbox: bool = True,
) -> dict[int, float]:
    """The product-path measurement at each N; the ratio of medians at each."""
    check_same_activity_options(bench_spec(2, tool))
    check_same_worker_options(Settings())
    load_tool_modules([], import_path=[])  # the built-ins, and echo_async (imported above)
    with tempfile.TemporaryDirectory(prefix="stepflow-bench-product-") as tmp:
        scratch = Path(tmp)
        project = scratch / "project"  # the worker's directory: no stepflow.toml, no pyproject
        project.mkdir()
        queue = f"bench-stepflow-{uuid.uuid4().hex[:8]}"
        baseline_queue = f"bench-baseline-{uuid.uuid4().hex[:8]}"
        # The driver is `stepflow run` in the worker's project: its queue and payload store.
        settings = Settings(
            task_queue=queue,
            tool_modules=[],
            import_path=[],
            payload_dir=project / ".stepflow" / "payloads",
        )
        # The server of `start_server`, with the driver's settings (its payload store).
        env = await start_ephemeral_environment(
            settings,
            db_file=None if server_kind == "memory" else scratch / f"{server_kind}.db",
            pragmas={} if server_kind == "file-sqlite-defaults" else None,
        )
        workers: dict[str, WorkerProcess] = {}
        try:
            address = env.client.service_client.config.target_host
            os.environ["TEMPORAL_ADDRESS"] = address  # for `connect`, as the CLI connects
            os.environ["TEMPORAL_NAMESPACE"] = "default"
            stepflow = StepflowClient(await connect(settings=settings), settings=settings)
            plain = await Client.connect(address, namespace="default")

            async def start_workers(profile: bool) -> None:
                def prof(kind: str) -> list[str]:
                    out = scratch / f"profile-{kind}"
                    return [str(WORKER_SCRIPT), "--profile", str(out)] if profile else []

                workers["pipeline"] = WorkerProcess(
                    "stepflow worker",
                    # `python worker.py`, as a user runs it; profiled: its main() in the wrapper
                    [sys.executable, *(prof("pipeline") or ["-m", "stepflow.worker"])]
                    + (["stepflow"] if profile else []),
                    worker_env(address, queue, tool, stepflow_sandbox),
                    project,
                    scratch / "stepflow-worker.log",
                )
                baseline_args = ["baseline", "--address", address, "--task-queue", baseline_queue]
                if not baseline_sandbox:
                    baseline_args.append("--no-sandbox")
                workers["baseline"] = WorkerProcess(
                    "baseline worker",
                    [sys.executable, *(prof("baseline") or [str(WORKER_SCRIPT)]), *baseline_args],
                    worker_env(address, None, TOOL),
                    project,
                    scratch / "baseline-worker.log",
                )
                await workers["pipeline"].wait_for(WORKER_READY_LINE)
                await workers["baseline"].wait_for(ow.BASELINE_READY_LINE)

            await start_workers(profile=False)
            session = Product(
                stepflow, plain, baseline_queue, tool, Meter(workers, dev_server_pid())
            )
            specs = {n: bench_spec(n, tool) for n in steps_list}
            await session.baseline(steps_list[0])  # warm-up: imports, caches, first tasks
            await session.pipeline(specs[steps_list[0]])
            for n in steps_list:
                runs = session.runs.setdefault(n, [])
                for _ in range(repeat if n <= LARGE else repeat_large):
                    runs.append(await session.baseline(n))
                    runs.append(await session.pipeline(specs[n]))
            evidence = {
                n: {
                    kind: await history_evidence(
                        next(r for r in reversed(session.runs[n]) if r.kind == kind)
                    )
                    for kind in ("baseline", "pipeline")
                }
                for n in steps_list
            }
            print()
            print(
                f"python {platform.python_version()}, temporalio {temporalio.__version__}, "
                f"cores: {cores()}, load average after the timed runs {load()}"
            )
            print(
                "workflow code: Stepflow's "
                + ("in the SDK's sandbox" if stepflow_sandbox else "outside the sandbox (default)")
                + ", the baseline's "
                + ("in the sandbox (the SDK's default)" if baseline_sandbox else "outside it")
            )
            ratios, medians, cpu = timing_report(
                session, steps_list, repeat, repeat_large, server_kind, tool, evidence
            )
            if profile_runs:
                for worker in workers.values():
                    await worker.stop()
                await start_workers(profile=True)
                session.meter = Meter(workers, session.meter.server_pid)
                await session.baseline(steps_list[0])  # warm-up, not profiled
                await session.pipeline(specs[steps_list[0]])
                for number, n in enumerate(steps_list, 1):
                    for worker in workers.values():
                        await worker.signal(signal.SIGUSR1, ow.PROFILE_STARTED)
                    profiled: list[ProductRun] = []
                    for _ in range(profile_runs if n <= LARGE else 1):
                        profiled.append(await session.baseline(n))
                        profiled.append(await session.pipeline(specs[n]))
                    session.profiles[n] = {}
                    for kind, worker in workers.items():
                        await worker.signal(signal.SIGUSR2, ow.PROFILE_WRITTEN)
                        mine = [r for r in profiled if r.kind == kind]
                        written = scratch / f"profile-{kind}.{number}"
                        if keep_profiles is not None:  # made by main()
                            shutil.copy(written, keep_profiles / f"{kind}-N{n}.prof")
                        session.profiles[n][kind] = Profile.read(
                            written,
                            steps=sum(r.steps for r in mine),
                            process_cpu_ms=sum(r.worker_cpu_ms for r in mine),
                        )
        finally:
            for worker in workers.values():
                await worker.stop()
            await env.shutdown()

    for n in steps_list:
        if n in session.profiles:
            profile_report(n, session.profiles[n], session.profiles[n]["pipeline"].steps // n)
    if len(steps_list) > 1:
        scaling_report(steps_list, ratios, medians, cpu, repeat_large)
    print()
    print(f"load average at the end {load()}")
    return ratios


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


# ---------------------------------------------------------------------------
# Where a worker's time goes: its profile, per step

Func = tuple[str, int, str]
"""pstats' key of a function: (file, first line, name)."""


def _in(*parts: str) -> Any:
    """Functions whose file's path holds one of `parts`."""
    return lambda path, _name: any(part in path for part in parts)


def _fn(basename: str, *names: str) -> Any:
    """Functions called one of `names` in a file called `basename` (sandboxed modules too)."""
    return lambda path, name: os.path.basename(path) == basename and name in names


def _stepflow_code(path: str, _name: str) -> bool:
    root = os.path.dirname(BENCH_DIR)
    return path.startswith((root, "stepflow/")) and "/.venv/" not in path and "/bench/" not in path


INCLUSIVE: list[tuple[str, Any]] = [
    ("workflow activations (SDK activate, in its pool thread)", _fn("_workflow.py", "activate")),
    ("  Stepflow: RunVisibility.publish (visibility.py)", _fn("visibility.py", "publish")),
    ("    details_markdown (run_view.py)", _fn("run_view.py", "details_markdown")),
    ("    StepCounter.count (step_metrics.py)", _fn("step_metrics.py", "count")),
    ("    workflow.set_current_details", _fn("workflow.py", "set_current_details")),
    ("    workflow.upsert_search_attributes", _fn("workflow.py", "upsert_search_attributes")),
    ("  Stepflow: live_status (run_view.py)", _fn("run_view.py", "live_status")),
    ("  Stepflow: counts (run_view.py)", _fn("run_view.py", "counts")),
    (
        "  Stepflow: _start_ready + _settle (pipeline.py)",
        _fn("pipeline.py", "_start_ready", "_settle"),
    ),
    ("  Stepflow: _should_wake (pipeline.py)", _fn("pipeline.py", "_should_wake")),
    (
        "  Stepflow: Handover.suggested/lets_steps_start",
        _fn("handover.py", "suggested", "lets_steps_start"),
    ),
    ("  Stepflow: templates render (templates.py)", _fn("templates.py", "render")),
    ("  Stepflow: cached (steps/cache.py)", _fn("cache.py", "cached")),
    ("  Stepflow: ToolRunner.call (steps/tool.py)", _fn("tool.py", "call")),
    ("  Stepflow: state.succeed (run_state.py)", _fn("run_state.py", "succeed")),
    ("  workflow.patched", _fn("workflow.py", "patched")),
    ("  workflow.execute_activity", _fn("workflow.py", "execute_activity")),
    (
        "workflow task payloads: decode_activation + encode_completion",
        _fn("worker.py", "decode_activation", "encode_completion"),
    ),
    (
        "new workflow instance, sandbox imports (per run)",
        _fn("_workflow.py", "_create_workflow_instance"),
    ),
    (
        "activity tasks, SDK side (_handle_start_activity_task)",
        _fn("_activity.py", "_handle_start_activity_task"),
    ),
    (
        "  the activity function (tool_<name> / the baseline's echo)",
        lambda path, name: (
            (os.path.basename(path), name)
            in {
                ("tool_activities.py", "run_sync"),
                ("tool_activities.py", "run_async"),
                ("overhead_worker.py", "echo_sync"),
                ("overhead_worker.py", "echo_async_activity"),
            }
        ),
    ),
    ("    get_settings (settings.py)", _fn("settings.py", "get_settings")),
    ("    validate_args (registry.py)", _fn("registry.py", "validate_args")),
    ("    ToolActivities._start / _finish", _fn("tool_activities.py", "_start", "_finish")),
    ("    activities/telemetry.py", _in("activities/telemetry.py")),
    ("    ProgressReporter.report_retry", _fn("progress.py", "report_retry")),
    ("payload_storage.py (store checks, both sides)", _in("/payload_storage.py")),
    ("logging (structlog + logging, both sides)", _in("/structlog/", "/logging/")),
]
"""Named costs, each inclusive (with what it calls), counted where entered from outside.

Indented rows are parts of the row above them. Per step; calls per step beside.
"""

ORIGINS: list[tuple[str, Any]] = [
    ("Stepflow workflows/", lambda p, _n: _stepflow_code(p, _n) and "/workflows/" in p),
    ("Stepflow activities/", lambda p, _n: _stepflow_code(p, _n) and "/activities/" in p),
    ("Stepflow runtime/ and worker.py", _stepflow_code),
    ("the baseline (overhead_worker.py)", _in("overhead_worker.py")),
    ("SDK workflow sandbox (workflow_sandbox/)", _in("workflow_sandbox/")),
    (
        "SDK workflow runtime (_workflow_instance.py, workflow.py)",
        _in("_workflow_instance.py", "temporalio/workflow.py"),
    ),
    ("SDK activity worker", _in("worker/_activity.py", "temporalio/activity.py")),
    ("SDK data converter", _in("temporalio/converter")),
    ("SDK, the rest (temporalio/)", _in("/temporalio/")),
    ("pydantic, pydantic_core", lambda path, name: "pydantic" in path + name),
    ("logging (structlog, logging)", _in("/structlog/", "/logging/")),
    ("protobuf", lambda path, name: "protobuf" in path + name or "_pb2" in path),
    ("asyncio", _in("/asyncio/")),
    ("the rest (stdlib, other libraries, builtins)", lambda _p, _n: True),
]
"""Who runs the CPU: each Python function's own time, with the builtins it calls, goes to
the first origin its file matches. The rows add up to all the profiler saw."""


@dataclass
class Profile:
    """One worker's profile over some runs: time (ms) and calls per step of each group."""

    steps: int
    process_cpu_ms: float
    """The process's CPU (/proc) over the profiled runs: all threads, profiler overhead too."""
    stats: dict[Func, tuple[int, int, float, float, dict[Func, tuple[int, int, float, float]]]]

    @classmethod
    def read(cls, path: Path, *, steps: int, process_cpu_ms: float) -> Profile:
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        return cls(steps, process_cpu_ms, stats)

    def python_cpu_ms(self) -> float:
        """CPU the profiler saw, every profiled thread's, per step."""
        return sum(entry[2] for entry in self.stats.values()) * 1000 / self.steps

    def group(self, match: Any) -> tuple[float, float]:
        """(ms, calls) per step of the functions `match` picks, entered from outside them."""
        members = {f for f in self.stats if match(f[0], f[2])}
        seconds = 0.0
        calls = 0
        for func in members:
            _cc, nc, _tt, ct, callers = self.stats[func]
            if not callers:
                seconds += ct
                calls += nc
                continue
            for caller, edge in callers.items():
                if caller not in members:
                    calls += edge[0]
                    seconds += edge[3]
        return seconds * 1000 / self.steps, calls / self.steps

    def origins(self) -> list[float]:
        """ms per step of each of ORIGINS (see there)."""
        totals = [0.0] * len(ORIGINS)

        def origin(func: Func) -> int:
            return next(i for i, (_l, match) in enumerate(ORIGINS) if match(func[0], func[2]))

        for func, (_cc, _nc, tt, _ct, callers) in self.stats.items():
            if func[0] != "~" or not callers:
                totals[origin(func)] += tt
                continue
            for caller, edge in callers.items():  # a builtin: charged to who called it
                totals[origin(caller)] += edge[2]
            totals[-1] += tt - sum(edge[2] for edge in callers.values())
        return [t * 1000 / self.steps for t in totals]

    def top(self, count: int) -> list[tuple[float, float, Func]]:
        """The functions with the most time of their own: (ms per step, calls per step, key)."""
        rows = [
            (entry[2] * 1000 / self.steps, entry[1] / self.steps, func)
            for func, entry in self.stats.items()
        ]
        return sorted(rows, reverse=True)[:count]


def _where(func: Func) -> str:
    path, line, name = func
    if path == "~":
        return name[:70]
    parts = Path(path).parts
    short = "/".join(parts[-2:])
    return f"{short}:{line} {name}"[-70:]


def profile_report(n: int, profiles: dict[str, Profile], runs: int) -> None:
    sf, base = profiles["pipeline"], profiles["baseline"]
    print()
    print(
        f"== where the workers' time goes, N={n} (each worker profiled over {runs} run(s) after "
        "the timed ones; CPU time of every Python thread, per step)"
    )
    print(
        "  the profiler slows the code it watches, roughly 1.5-3x: compare the two columns and "
        "the rows, not these with the unprofiled CPU above"
    )
    print(f"  {'':<62} {'stepflow':>15} {'baseline':>15}")
    print(f"  {'':<62} {'ms/step calls':>15} {'ms/step calls':>15}")
    print(
        f"  {'process CPU, profiled (/proc: all threads, profiler too)':<62} "
        f"{sf.process_cpu_ms / sf.steps:>7.3f} {'':>7} "
        f"{base.process_cpu_ms / base.steps:>7.3f}"
    )
    print(
        f"  {'Python CPU the profiler saw':<62} {sf.python_cpu_ms():>7.3f} {'':>7} "
        f"{base.python_cpu_ms():>7.3f}"
    )
    print("  named costs, each with what it calls (indented: part of the row above)")
    for label, match in INCLUSIVE:
        ms, calls = sf.group(match)
        bms, bcalls = base.group(match)
        if ms == 0 and bms == 0 and calls == 0 and bcalls == 0:
            continue
        print(f"  {label:<62} {ms:>7.3f} {calls:>7.2f} {bms:>7.3f} {bcalls:>7.2f}")
    print("  who runs the CPU (own time, with the builtins called; adds up to the Python CPU)")
    for (label, _match), ms, bms in zip(ORIGINS, sf.origins(), base.origins(), strict=True):
        print(f"  {label:<62} {ms:>7.3f} {'':>7} {bms:>7.3f}")
    print()
    print("  the Stepflow worker's functions with the most time of their own (ms/step, calls/step)")
    for ms, calls, func in sf.top(18):
        print(f"    {ms:>7.3f} {calls:>7.2f}  {_where(func)}")


Medians = dict[int, dict[str, float]]


def timing_report(
    session: Product,
    steps_list: list[int],
    repeat: int,
    repeat_large: int,
    server_kind: str,
    tool: str,
    evidence: dict[int, dict[str, tuple[Counter[str], Breakdown]]],
) -> tuple[dict[int, float], Medians, Medians]:
    """The timed runs at each N; the ratios, the medians of ms/step and of worker CPU/step."""
    print(
        f"product path: a {server_kind} dev server ({SERVERS[server_kind]}), tuned as the tests'; "
        f"`python -m stepflow.worker` (= python worker.py, default settings) and a minimal SDK "
        f"worker (bench/overhead_worker.py), each in its own process; pipelines started with "
        f"StepflowClient.start_pipeline as `stepflow run` does; tool {tool!r} "
        f"({'async' if tool != TOOL else 'sync, in the thread pool'}) on both sides"
    )
    print(
        f"R={repeat} timed runs of each kind for N <= {LARGE}, {repeat_large} above, "
        "alternating baseline, pipeline, ...; 1 untimed warm-up of each first"
    )
    ratios: dict[int, float] = {}
    medians: Medians = {}
    cpu: Medians = {}
    for n in steps_list:
        runs = session.runs[n]
        print()
        print(f"== N={n} sequential steps")
        print(
            f"{'#':>2}  {'kind':<9} {'server ms':>10} {'ms/step':>8} {'wall ms':>9} {'events':>7} "
            f"{'runs':>4} {'history KB':>10} {'worker CPU':>10} {'server CPU':>10}"
        )
        for i, r in enumerate(runs, 1):
            print(
                f"{i:>2}  {r.kind:<9} {r.server_ms:>10.1f} {r.per_step_ms:>8.2f} "
                f"{r.wall_ms:>9.1f} {r.events:>7} {r.chain:>4} {r.history_bytes / 1024:>10.1f} "
                f"{r.worker_cpu_per_step:>10.2f} {r.server_cpu_per_step:>10.2f}"
            )
        print("    (worker CPU, server CPU: ms per step, /proc utime+stime, 10 ms ticks)")
        medians[n] = {
            k: statistics.median(r.per_step_ms for r in runs if r.kind == k)
            for k in ("baseline", "pipeline")
        }
        cpu[n] = {
            k: statistics.median(r.worker_cpu_per_step for r in runs if r.kind == k)
            for k in ("baseline", "pipeline")
        }
        server_cpu = {
            k: statistics.median(r.server_cpu_per_step for r in runs if r.kind == k)
            for k in ("baseline", "pipeline")
        }
        pairs = [p.per_step_ms / b.per_step_ms for b, p in zip(runs[::2], runs[1::2], strict=True)]
        ratios[n] = medians[n]["pipeline"] / medians[n]["baseline"]
        print()
        for k in ("baseline", "pipeline"):
            print(
                f"median {k:<9} {medians[n][k]:6.2f} ms/step server-side; worker CPU "
                f"{cpu[n][k]:.2f} ms/step; dev server CPU {server_cpu[k]:.2f} ms/step"
            )
        print(
            "pairwise ratios (each pipeline run / the baseline run just before it): "
            + " ".join(f"{x:.2f}" for x in pairs)
            + f", median {statistics.median(pairs):.2f}"
        )
        print(
            f"Stepflow's cost per step: {medians[n]['pipeline'] - medians[n]['baseline']:+.2f} ms "
            f"server-side, {cpu[n]['pipeline'] - cpu[n]['baseline']:+.2f} ms of worker CPU"
        )
        target = f" (target <= {PRODUCT_TARGET_RATIO:.2f} at N=100)" if n == 100 else ""
        print(f"product-path ratio (pipeline / hand-written) at N={n}: {ratios[n]:.2f}{target}")
        if n == 100 and ratios[n] > PRODUCT_TARGET_RATIO:
            print("TARGET MISSED")
        counts_b, bd_b = evidence[n]["baseline"]
        counts_p, bd_p = evidence[n]["pipeline"]
        first = "" if runs[-1].chain == 1 else ", the first run of its chain"
        print()
        print(f"history events of the last timed run of each kind (N={n}{first})")
        print(f"  {'event type':<32} {'baseline':>9} {'pipeline':>9}")
        for name in sorted(set(counts_b) | set(counts_p)):
            print(f"  {name:<32} {counts_b[name]:>9} {counts_p[name]:>9}")
        print()
        print("where a step's time goes (ms per step, from event timestamps)")
        print(f"  {'phase':<44} {'baseline':>9} {'pipeline':>9}")
        for label, b, p in (
            ("workflow task scheduled -> started", bd_b.wft_queue, bd_p.wft_queue),
            ("workflow task started -> completed (worker)", bd_b.wft_worker, bd_p.wft_worker),
            ("activity scheduled -> started", bd_b.act_queue, bd_p.act_queue),
            ("activity started -> completed", bd_b.act_run, bd_p.act_run),
            ("rest (between events)", bd_b.gap, bd_p.gap),
            ("workflow tasks per step", bd_b.wft_per_step, bd_p.wft_per_step),
            ("slowest single workflow task (ms)", bd_b.wft_worker_max, bd_p.wft_worker_max),
        ):
            print(f"  {label:<44} {b:>9.2f} {p:>9.2f}")
    return ratios, medians, cpu


def scaling_report(
    steps_list: list[int],
    ratios: dict[int, float],
    medians: Medians,
    cpu: Medians,
    repeat_large: int,
) -> None:
    """Per-step cost by N, and the largest N's over the smallest's."""
    first, last = steps_list[0], steps_list[-1]
    print()
    print("== scaling: per-step cost by N (medians, ms/step)")
    print(
        f"  {'N':>6} {'baseline':>9} {'pipeline':>9} {'ratio':>6} {'Stepflow +':>10} "
        f"{'CPU base':>9} {'CPU sf':>7} {'CPU +':>6}"
    )
    for n in steps_list:
        m, c = medians[n], cpu[n]
        print(
            f"  {n:>6} {m['baseline']:>9.2f} {m['pipeline']:>9.2f} {ratios[n]:>6.2f} "
            f"{m['pipeline'] - m['baseline']:>+10.2f} {c['baseline']:>9.2f} "
            f"{c['pipeline']:>7.2f} {c['pipeline'] - c['baseline']:>+6.2f}"
        )
    growth = medians[last]["pipeline"] / medians[first]["pipeline"]
    base_growth = medians[last]["baseline"] / medians[first]["baseline"]
    cpu_growth = cpu[last]["pipeline"] / cpu[first]["pipeline"]
    print(
        f"  pipeline per-step cost at N={last} / at N={first}: {growth:.2f} "
        f"(target <= {SCALING_TARGET:.2f}); worker CPU per step {cpu_growth:.2f}; "
        f"the baseline's, for scale: {base_growth:.2f}"
    )
    if growth > SCALING_TARGET:
        print("SCALING TARGET MISSED")
    if repeat_large == 1 and any(n > LARGE for n in steps_list):
        print(f"  (N > {LARGE}: one timed run of each kind, so no median: --repeat-large)")


def parse_steps(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give step counts of at least 1, comma-separated")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode",
        choices=["in-process", "product", "both"],
        default="in-process",
        help="in-process (default), product (worker processes), or both, side by side",
    )
    parser.add_argument(
        "--steps",
        type=parse_steps,
        help="steps per run, comma-separated for several (e.g. 100,10000); "
        "default 200 in process, 100 on the product path",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="timed runs of each kind (default 3 in process, 5 on the product path)",
    )
    parser.add_argument(
        "--repeat-large",
        type=int,
        default=1,
        help=f"product path: timed runs of each kind for N > {LARGE} (default 1)",
    )
    parser.add_argument(
        "--servers",
        default="memory,file",
        help=f"in process: comma-separated kinds of dev server, of {', '.join(SERVERS)} "
        "(default memory,file)",
    )
    parser.add_argument(
        "--product-server",
        choices=list(SERVERS),
        default="file",
        help="product path: the kind of dev server (default file: what `make demo` starts)",
    )
    parser.add_argument(
        "--tool",
        choices=["sync", "async"],
        default="sync",
        help="product path: the no-op tool on both sides, sync `echo` in the thread pool "
        "(default) or async `echo_async`",
    )
    parser.add_argument(
        "--profile-runs",
        type=int,
        default=2,
        help=f"product path: profiled runs of each kind per N (1 for N > {LARGE}); 0: no profile",
    )
    parser.add_argument(
        "--keep-profiles",
        type=Path,
        metavar="DIR",
        help="product path: keep the workers' profiles here (pipeline-N100.prof, ...; pstats)",
    )
    parser.add_argument(
        "--stepflow-sandbox",
        choices=["off", "on"],
        default="off",
        help="product path: Stepflow's worker as by default (off), or STEPFLOW_WORKFLOW_SANDBOX=1",
    )
    parser.add_argument(
        "--baseline-sandbox",
        choices=["on", "off"],
        default="on",
        help="product path: the baseline's workflow in the SDK's sandbox (its default) or not",
    )
    args = parser.parse_args(argv)
    if (args.repeat is not None and args.repeat < 1) or args.repeat_large < 1:
        parser.error("--repeat and --repeat-large must be at least 1")
    if args.profile_runs < 0:
        parser.error("--profile-runs must be at least 0")
    if args.keep_profiles is not None:
        args.keep_profiles.mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SERVERS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        parser.error(
            f"--servers: give each of {', '.join(SERVERS)} at most once, got {args.servers!r}"
        )
    in_process: dict[int, dict[str, float]] = {}
    if args.mode in ("in-process", "both"):
        for steps in args.steps or ([100] if args.mode == "both" else [200]):
            in_process[steps] = asyncio.run(bench(steps, args.repeat or 3, kinds))
    if args.mode in ("product", "both"):
        tool = TOOL if args.tool == "sync" else "echo_async"
        ratios = asyncio.run(
            product(
                args.steps or [100],
                args.repeat or 5,
                args.repeat_large,
                args.profile_runs,
                args.product_server,
                tool,
                args.keep_profiles,
                stepflow_sandbox=args.stepflow_sandbox == "on",
                baseline_sandbox=args.baseline_sandbox == "on",
            )
        )
        if in_process:
            print()
            print("== overhead ratio (pipeline / hand-written, ratio of medians), side by side")
            for steps, ratio in ratios.items():
                inside = ", ".join(f"{k} {v:.2f}" for k, v in in_process.get(steps, {}).items())
                print(
                    f"  N={steps}: in process ({inside or 'not run'}); "
                    f"product path ({args.product_server} server) {ratio:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
