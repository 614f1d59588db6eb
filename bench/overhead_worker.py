"""The worker processes of `bench/overhead.py --mode product`, and its async no-op tool.

    python bench/overhead_worker.py baseline --address HOST:PORT --task-queue Q
    python bench/overhead_worker.py --profile OUT stepflow     # python -m stepflow.worker, profiled
    python bench/overhead_worker.py --profile OUT baseline ...  # the baseline, profiled

- `baseline`: a minimal Temporal SDK worker, in a process of its own: one workflow
  (`bench_baseline`, default sandbox) that runs N sequential no-op activities, each
  passed the previous one's output, continuing as new when the server suggests it
  (as a Stepflow run does; 10,000 steps would pass Temporal's 51,200-event limit).
  The activities carry the same payload shape as a Stepflow tool call (`ToolCallInput`:
  step id, tool, args, idempotency key, report_to; `ToolCallOutput`: output, attempt)
  as plain dataclasses through the SDK's default converter, with the same timeout and
  retry policy; `tool_echo` is a sync function run in a thread pool sized like
  Stepflow's (STEPFLOW_MAX_CONCURRENT_ACTIVITIES' default), as Stepflow's `echo` is,
  and `tool_echo_async` an async one. It prints `BASELINE_READY_LINE` once polling.
  The workflow runs in the SDK's sandbox (its default), or outside it with `--no-sandbox`.
- `stepflow`: `stepflow.worker.main()`, what `python worker.py` runs, with the
  process's environment and arguments; only useful with `--profile`.
- `--profile OUT`: run either with cProfile ready: SIGUSR1 opens a window, SIGUSR2
  writes it to OUT.<n> (n = 1, 2, ...), so start-up and warm-up stay out. One
  profiler per thread (the event loop's, and each pool thread's: the SDK runs
  workflow activations and sync activities in thread pools, which a plain
  `python -m cProfile` does not see; nor could it write its file, as the worker
  leaves through `os._exit`), each timed by its thread's CPU clock
  (`time.thread_time`), so waiting costs nothing and threads do not charge each
  other for the GIL. Its workflow tasks may take 120 s, not the SDK's 2 s, before
  they count as deadlocked (the profiler slows them down).

Imported as a tool module (STEPFLOW_TOOL_MODULES=overhead_worker with this
directory on STEPFLOW_IMPORT_PATH), it registers `echo_async`, an async twin of the
built-in `echo`, for `overhead.py --tool async`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from stepflow.activities.registry import tool

BASELINE_WORKFLOW = "bench_baseline"
BASELINE_READY_LINE = "bench baseline worker started"
PROFILE_STARTED = "bench profile window opened"
PROFILE_WRITTEN = "bench profile written to"
SEED = "ping"
START_TO_CLOSE = timedelta(minutes=5)
"""Stepflow's DEFAULT_START_TO_CLOSE; overhead.py checks the two agree."""
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=None,
    maximum_attempts=3,
    non_retryable_error_types=None,
)
"""What a Stepflow step gets with no retry settings; overhead.py checks the two agree."""
POOL_THREADS = 100
"""Stepflow's default STEPFLOW_MAX_CONCURRENT_ACTIVITIES; overhead.py checks the two agree."""


async def echo_async(value: Any = None) -> Any:
    """Return the value it is given, unchanged: `echo` without the thread-pool hop.

    Args:
        value: Any JSON value.

    Returns:
        The same value.
    """
    return value


if __name__ != "__main__":  # run as a script, main() runs in the module `overhead_worker`
    tool(echo_async)


def step_id(index: int) -> str:
    return f"s{index:04d}"


@dataclass
class Call:
    """The shape of Stepflow's `ToolCallInput`."""

    step_id: str
    tool: str
    args: dict[str, Any]
    idempotency_key: str
    report_to: str | None = None


@dataclass
class Result:
    """The shape of Stepflow's `ToolCallOutput`."""

    output: Any
    attempt: int


@dataclass
class Chain:
    """The baseline's input: N steps, from step `done`, starting from `value`."""

    steps: int
    activity: str = "tool_echo"
    done: int = 0
    value: Any = SEED


@activity.defn(name="tool_echo")
def echo_sync(call: Call) -> Result:
    return Result(output=call.args.get("value"), attempt=activity.info().attempt)


@activity.defn(name="tool_echo_async")
async def echo_async_activity(call: Call) -> Result:
    return Result(output=call.args.get("value"), attempt=activity.info().attempt)


@workflow.defn(name=BASELINE_WORKFLOW, sandboxed=True)  # the default, as Stepflow's workflows
class BaselineWorkflow:
    """N sequential calls of a no-op activity, each given the output of the one before."""

    @workflow.run
    async def run(self, chain: Chain) -> Any:
        value = chain.value
        for index in range(chain.done, chain.steps):
            sid = step_id(index)
            info = workflow.info()
            result = await workflow.execute_activity(
                chain.activity,
                Call(
                    step_id=sid,
                    tool=chain.activity.removeprefix("tool_"),
                    args={"value": value},
                    idempotency_key=f"{info.workflow_id}/{info.first_execution_run_id}/{sid}",
                ),
                result_type=Result,
                start_to_close_timeout=START_TO_CLOSE,
                retry_policy=RETRY,
            )
            value = result.output
            if index + 1 < chain.steps and workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(Chain(chain.steps, chain.activity, index + 1, value))
        return value


async def serve_baseline(
    address: str, namespace: str, task_queue: str, sandboxed: bool = True
) -> None:
    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    client = await Client.connect(address, namespace=namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=POOL_THREADS) as pool:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[BaselineWorkflow],
            activities=[echo_sync, echo_async_activity],
            activity_executor=pool,
            # The SDK's default is the sandbox; --no-sandbox compares with Stepflow's default.
            workflow_runner=SandboxedWorkflowRunner() if sandboxed else UnsandboxedWorkflowRunner(),
        ):
            print(BASELINE_READY_LINE, flush=True)
            await stop.wait()


def baseline_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="overhead_worker.py baseline")
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--no-sandbox", action="store_true", help="the workflow outside it")
    args = parser.parse_args(argv)
    asyncio.run(serve_baseline(args.address, args.namespace, args.task_queue, not args.no_sandbox))
    return 0


def stepflow_main(argv: list[str]) -> int:
    from stepflow.worker import main

    return main(argv)


def profiled(run: Any, argv: list[str], out: str) -> int:
    """`run(argv)`, profiled in windows: SIGUSR1 opens one, SIGUSR2 writes it to `out`.<n>.

    A window's profile has one cProfile per thread (the main thread's, and each
    pool thread's while it runs a work item), each timed by that thread's CPU
    clock, merged into one pstats file. Start-up and whatever runs between
    windows are left out.
    """
    import concurrent.futures.thread as pool_threads
    import cProfile
    import pstats
    import threading
    import time

    profiles: list[cProfile.Profile] = []
    local = threading.local()
    windows = 0
    main_thread: cProfile.Profile | None = None
    original = pool_threads._WorkItem.run

    def run_item(self: Any) -> None:
        profile: cProfile.Profile | None = None
        if main_thread is not None:  # a window is open
            profile = getattr(local, "profile", None)
            if profile is None or profile not in profiles:
                profile = local.profile = cProfile.Profile(time.thread_time)
                profiles.append(profile)
            profile.enable()
        try:
            original(self)
        finally:
            if profile is not None:
                profile.disable()

    def open_window(_sig: int, _frame: Any) -> None:
        nonlocal main_thread
        profiles.clear()
        main_thread = cProfile.Profile(time.thread_time)
        print(PROFILE_STARTED, file=sys.stderr, flush=True)
        main_thread.enable()

    def close_window(_sig: int, _frame: Any) -> None:
        nonlocal main_thread, windows
        if main_thread is None:
            return
        main_thread.disable()
        stats = pstats.Stats(Snapshot([main_thread, *profiles]))  # type: ignore[arg-type]
        main_thread = None
        windows += 1
        path = f"{out}.{windows}"
        stats.dump_stats(path)
        print(
            f"{PROFILE_WRITTEN} {path} ({len(profiles) + 1} threads)", file=sys.stderr, flush=True
        )

    pool_threads._WorkItem.run = run_item  # type: ignore[method-assign]
    lift_deadlock_timeout()
    signal.signal(signal.SIGUSR1, open_window)
    signal.signal(signal.SIGUSR2, close_window)
    return int(run(argv))


PROFILED_DEADLOCK_SECONDS = 120


def lift_deadlock_timeout() -> None:
    """Profiled workflow tasks may take longer than the SDK's 2 s deadlock timeout.

    A 10,000-step pipeline's first task (its input validated, its state built)
    takes over 2 s under cProfile, and fails, again and again; the deadlock
    timeout is not a setting, so a profiled worker's is set to 120 s here.
    """
    from temporalio.worker import _workflow

    init = _workflow._WorkflowWorker.__init__

    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if self._deadlock_timeout_seconds is not None:
            self._deadlock_timeout_seconds = PROFILED_DEADLOCK_SECONDS

    _workflow._WorkflowWorker.__init__ = patched  # type: ignore[method-assign]


class Snapshot:
    """The stats of several cProfiles as pstats reads them, one entry per function.

    `cProfile.Profile.create_stats` keys its entries by (file, line, name) and keeps
    only the last of several code objects with the same key; the sandbox imports
    each workflow module again for every run, so its functions have a code object
    per run, and all of them are wanted here.
    """

    def __init__(self, profiles: list[Any]) -> None:
        self.stats: dict[Any, Any] = {}
        for profile in profiles:
            entries = profile.getstats()
            for entry in entries:
                func = _label(entry.code)
                cc, nc, tt, ct, callers = self.stats.get(func, (0, 0, 0.0, 0.0, {}))
                calls = entry.callcount
                self.stats[func] = (
                    cc + calls - entry.reccallcount,
                    nc + calls,
                    tt + entry.inlinetime,
                    ct + entry.totaltime,
                    callers,
                )
            for entry in entries:
                func = _label(entry.code)
                for sub in entry.calls or ():
                    callee = self.stats.get(_label(sub.code))
                    if callee is None:
                        continue
                    nc, cc, tt, ct = callee[4].get(func, (0, 0, 0.0, 0.0))
                    callee[4][func] = (
                        nc + sub.callcount,
                        cc + sub.callcount - sub.reccallcount,
                        tt + sub.inlinetime,
                        ct + sub.totaltime,
                    )

    def create_stats(self) -> None:
        """What pstats.Stats calls; the stats are made already."""


def _label(code: Any) -> tuple[str, int, str]:
    if isinstance(code, str):
        return ("~", 0, code)
    return (code.co_filename, code.co_firstlineno, code.co_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", metavar="OUT", help="write a per-thread CPU profile here")
    parser.add_argument("worker", choices=["baseline", "stepflow"])
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    run = baseline_main if args.worker == "baseline" else stepflow_main
    if args.profile:
        return profiled(run, args.args, args.profile)
    return run(args.args)


if __name__ == "__main__":
    import overhead_worker  # one copy of this module: the sandbox imports it by this name

    from stepflow.runtime import exit_now  # skip the interpreter's shutdown (sdk-python#300)

    exit_now(overhead_worker.main())
