"""Rerun from a step: the steps before it are taken over (REUSED), it and everything after
run again. The tools journal every start, so each test shows exactly what ran again."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient
from stepflow.client.rerun import RerunRefused
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.control_tools import eventually
from tests.support.helpers import pipeline, step
from tests.support.processes import ok, one_error_line, process_env, stepflow_cli
from tests.support.tools import journal_read

JOURNAL = {"journal": {"type": "string"}, "fail": {"type": "boolean", "default": False}}


def starts(journal: str) -> Counter[str]:
    """Starts by call: the idempotency key's last part (`write`), with the loop's
    iteration when the call ran in one (`revise/2/write`)."""
    counted: Counter[str] = Counter()
    for entry in journal_read(journal):
        if entry["event"] == "start":
            workflow_id, _run, call = entry["key"].rsplit("/", 2)
            inside = workflow_id.split("/", 1)[1] + "/" if "/" in workflow_id else ""
            counted[inside + call] += 1
    return counted


def record(step_id: str, value: Any, **fields: Any) -> dict[str, Any]:
    return step(
        step_id, "record", args={"journal": "{{ inputs.journal }}", "value": value}, **fields
    )


def chain() -> list[dict[str, Any]]:
    return [
        record("fetch", "facts"),
        record("write", "draft from {{ steps.fetch.output }}", depends_on=["fetch"]),
        step(
            "check",
            "fail",
            depends_on=["write"],
            when="inputs.fail",
            args={"message": "the check failed", "non_retryable": True},
        ),
        record(
            "publish",
            "{{ steps.write.output }}",
            depends_on=["write", "check"],
            trigger="none_failed",
        ),
    ]


async def test_rerun_from_a_middle_step_takes_over_the_steps_before_it(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(*chain(), inputs=JOURNAL)
    old_id = (await stepflow.start_pipeline(spec, {"journal": journal})).workflow_id
    first = await stepflow.get_result(old_id)
    assert first.status is PipelineStatus.SUCCEEDED, first.error

    run = await stepflow.rerun(old_id, "write")
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.rerun_of == old_id
    fetch = result.step("fetch")
    assert (fetch.status, fetch.reused_from, fetch.output) == (StepStatus.REUSED, old_id, "facts")
    assert result.output("publish") == first.output("publish")
    assert starts(journal) == {"fetch": 1, "write": 2, "publish": 2}


async def test_rerun_from_failed_with_a_changed_input_runs_the_failed_step_and_after(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(*chain(), inputs=JOURNAL)
    old = await stepflow.start_pipeline(spec, {"journal": journal, "fail": True})
    failed = await stepflow.get_result(old.workflow_id)
    assert failed.status is PipelineStatus.FAILED
    assert failed.step("check").status is StepStatus.FAILED

    run = await stepflow.rerun(old.workflow_id, from_failed=True, inputs={"fail": False})
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert [r.status for r in result.steps] == [
        StepStatus.REUSED,
        StepStatus.REUSED,
        StepStatus.SKIPPED,  # `when: inputs.fail` is false now
        StepStatus.SUCCEEDED,
    ]
    assert starts(journal) == {"fetch": 1, "write": 1, "publish": 1}


async def test_rerun_with_a_changed_spec_after_the_step_and_refused_before_it(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    old = await stepflow.start_pipeline(pipeline(*chain(), inputs=JOURNAL), {"journal": journal})
    await stepflow.get_result(old.workflow_id)
    changed = chain()
    changed[3] = record(
        "publish",
        "v2: {{ steps.write.output }}",
        depends_on=["write", "check"],
        trigger="none_failed",
    )

    run = await stepflow.rerun(
        old.workflow_id, "publish", pipeline=pipeline(*changed, inputs=JOURNAL)
    )
    result = await stepflow.get_result(run.workflow_id)
    assert result.output("publish") == "v2: draft from facts"
    assert starts(journal) == {"fetch": 1, "write": 1, "publish": 2}

    changed[0] = record("fetch", "other facts")
    with pytest.raises(RerunRefused, match="step 'fetch' changed since run"):
        await stepflow.rerun(old.workflow_id, "write", pipeline=pipeline(*changed, inputs=JOURNAL))
    with pytest.raises(RerunRefused, match="has no step 'nope'"):
        await stepflow.rerun(old.workflow_id, "nope")
    with pytest.raises(RerunRefused, match="has no failed step"):
        await stepflow.rerun(old.workflow_id, from_failed=True)


async def test_rerun_from_a_step_inside_a_loop_reruns_from_that_iteration(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    loop = {
        "id": "revise",
        "kind": "loop",
        "depends_on": ["fetch"],
        "max_iterations": 2,
        "steps": [
            record("write", "draft {{ loop.iteration }} of {{ steps.fetch.output }}"),
            record("review", "ok {{ steps.write.output }}", depends_on=["write"]),
        ],
    }
    spec = pipeline(record("fetch", "facts"), loop, inputs=JOURNAL)
    old = await stepflow.start_pipeline(spec, {"journal": journal})
    first = await stepflow.get_result(old.workflow_id)
    assert first.status is PipelineStatus.SUCCEEDED, first.error

    run = await stepflow.rerun(old.workflow_id, "revise.review")
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("revise") == first.output("revise")
    assert result.step("fetch").status is StepStatus.REUSED
    # Only iteration 2's review ran again, in the new run's iteration 2.
    assert starts(journal) == {
        "fetch": 1,
        "revise/1/write": 1,
        "revise/1/review": 1,
        "revise/2/write": 1,
        "revise/2/review": 2,
    }


async def test_rerun_from_a_step_inside_a_sub_pipeline(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    child = {
        "name": "child",
        "inputs": {"journal": {"type": "string"}},
        "steps": [record("one", 1), record("two", "{{ steps.one.output }}+1", depends_on=["one"])],
    }
    sub = {
        "id": "sub",
        "kind": "pipeline",
        "pipeline": child,
        "depends_on": ["fetch"],
        "inputs": {"journal": "{{ inputs.journal }}"},
    }
    spec = pipeline(record("fetch", "facts"), sub, inputs=JOURNAL)
    old = await stepflow.start_pipeline(spec, {"journal": journal})
    first = await stepflow.get_result(old.workflow_id)

    run = await stepflow.rerun(old.workflow_id, "sub.two")
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("sub") == first.output("sub") == {"one": 1, "two": "1+1"}
    assert starts(journal) == {"fetch": 1, "sub/one": 1, "sub/two": 2}


async def test_stepflow_rerun_from_the_command_line(
    worker: None,
    stepflow: StepflowClient,
    journal: str,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_TOOL_MODULES="tests.support.tools",
    )
    old = await stepflow.start_pipeline(pipeline(*chain(), inputs=JOURNAL), {"journal": journal})
    await stepflow.get_result(old.workflow_id)

    done = ok(
        await stepflow_cli(
            env,
            "rerun",
            old.workflow_id,
            "--from",
            "publish",
            "--id",
            f"{old.workflow_id}-2",
            "--json",
        )
    )
    result = json.loads(done.stdout)
    assert [s["status"] for s in result["steps"]] == ["REUSED", "REUSED", "SKIPPED", "SUCCEEDED"]
    assert result["rerun_of"] == old.workflow_id
    assert f"a rerun of {old.workflow_id}" in done.stderr

    plain = ok(await stepflow_cli(env, "rerun", old.workflow_id, "--from", "publish"))
    assert re.search(r"fetch\s+│\s+REUSED", plain.stdout), plain.stdout
    assert "2 reused" in plain.stderr + plain.stdout, plain.stdout

    one_error_line(
        await stepflow_cli(env, "rerun", old.workflow_id, "--from", "nope"), "has no step 'nope'"
    )
    one_error_line(
        await stepflow_cli(env, "rerun", "no-such-run", "--from-failed"),
        "no run with id 'no-such-run'",
    )
    usage = await stepflow_cli(env, "rerun", old.workflow_id)
    assert usage.code == 2 and "--from" in usage.stderr

    # The runs name each other: the rerun its source, the source its reruns.
    rerun_history = ok(await stepflow_cli(env, "history", f"{old.workflow_id}-2"))
    assert rerun_history.stdout.startswith(f"rerun of {old.workflow_id}\n")

    async def source_history() -> str:
        return ok(await stepflow_cli(env, "history", old.workflow_id)).stdout

    await eventually(
        source_history,
        lambda text: f"rerun as {old.workflow_id}-2 (SUCCEEDED)" in text,
        "the source run naming its rerun",
    )
