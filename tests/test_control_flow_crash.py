"""SIGKILL the worker in the middle of a for_each and of a loop iteration: a new worker
finishes the run, and no instance or body step that had completed runs again.

The tools journal every start with the call's idempotency key, which names the instance
(`.../each[3]`) or the iteration's child run (`<run>/revise/2/...`), so the journal shows
exactly what ran twice. As in tests/test_crash_recovery.py, the dead worker's runs move to
the new worker after the sticky timeout (10 s).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineStatus
from tests.support.crash import wait_for_journal
from tests.support.helpers import pipeline, step
from tests.support.processes import tool_worker_env
from tests.support.tools import journal_read
from tests.support.worker_processes import run_through_worker_crash

JOURNAL = {"journal": {"type": "string"}}
QUICK_RETRY = {"initial_interval": "100ms"}


def started_keys(journal: str) -> Counter[str]:
    """How many times each call (by idempotency key, run id left out) started."""
    keys: Counter[str] = Counter()
    for entry in journal_read(journal):
        if entry["event"] == "start":
            workflow_id, _run, call = entry["key"].rsplit("/", 2)
            keys[f"{workflow_id.split('/', 1)[-1] if '/' in workflow_id else ''}/{call}"] += 1
    return keys


def ended(entries: list[dict[str, object]]) -> int:
    return sum(1 for e in entries if e["event"] == "end")


async def test_worker_killed_mid_for_each_runs_only_the_unfinished_instances_again(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    spec = pipeline(
        step("plan", "echo", args={"value": [0, 0, 0, 0, 3, 3]}),
        step(
            "each",
            "record",
            depends_on=["plan"],
            for_each="{{ steps.plan.output }}",
            max_concurrency=2,
            # Items 4 and 5 take 3 s: the worker dies while they run.
            args={
                "journal": "{{ inputs.journal }}",
                "value": "{{ index }}",
                "seconds": "{{ item }}",
            },
            timeout={"start_to_close": "5s"},
            retry=QUICK_RETRY,
        ),
        inputs=JOURNAL,
    )
    env = tool_worker_env(temporal_env.client.service_client.config.target_host, task_queue)
    crash = await run_through_worker_crash(
        stepflow,
        env,
        tmp_path,
        spec,
        {"journal": journal},
        kill_when=lambda _: wait_for_journal(
            journal, lambda entries: ended(entries) == 4 and len(entries) == 10
        ),
    )

    result = crash.result
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("each") == [0, 1, 2, 3, 4, 5]
    starts = started_keys(journal)
    assert [starts[f"/each[{i}]"] for i in range(6)] == [1, 1, 1, 1, 2, 2], starts


async def test_worker_killed_mid_loop_iteration_runs_only_the_unfinished_step_again(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    body = [
        step("write", "record", args={"journal": "{{ inputs.journal }}", "value": "draft"}),
        step(
            "review",
            "record",
            depends_on=["write"],
            # Review n takes n seconds: the worker dies while the second runs.
            args={
                "journal": "{{ inputs.journal }}",
                "value": "{{ loop.iteration }}",
                "seconds": "{{ loop.iteration }}",
            },
            timeout={"start_to_close": "5s"},
            retry=QUICK_RETRY,
        ),
    ]
    spec = pipeline(
        {
            "id": "revise",
            "kind": "loop",
            "max_iterations": 3,
            "until": "loop.iteration == 3",
            "steps": body,
        },
        inputs=JOURNAL,
    )
    env = tool_worker_env(temporal_env.client.service_client.config.target_host, task_queue)
    crash = await run_through_worker_crash(
        stepflow,
        env,
        tmp_path,
        spec,
        {"journal": journal},
        # Iteration 1 done (write, review), iteration 2's write done, its review started.
        kill_when=lambda _: wait_for_journal(
            journal, lambda entries: ended(entries) == 3 and len(entries) == 7
        ),
    )

    result = crash.result
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("revise") == {"write": "draft", "review": 3}
    assert started_keys(journal) == {
        "revise/1/write": 1,
        "revise/1/review": 1,
        "revise/2/write": 1,
        "revise/2/review": 2,
        "revise/3/write": 1,
        "revise/3/review": 1,
    }
