"""The run-control commands of `stepflow` end to end: a real process, a real server, exit codes.

Runs are held open deterministically by `kind: approval` / `kind: input` steps
(they wait for a person) and by `control_gate` steps (they wait for a file).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import RunSummary, StepflowClient
from stepflow.client.render import counts_line, steps_table
from stepflow.workflows.control import PipelineState, RunStatus
from stepflow.workflows.models import (
    PipelineSpec,
    PipelineStatus,
    StepRecord,
    StepStatus,
    TokenUsage,
)
from tests.support.control_tools import (
    CONTROL_TOOL_MODULES,
    Gate,
    approval,
    eventually,
    gate_step,
    human_input,
    wait_started,
    wait_step,
)
from tests.support.helpers import pipeline, step
from tests.support.processes import (
    Completed,
    cli_process,
    ok,
    one_error_line,
    process_env,
    stepflow_cli,
)


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, task_queue: str) -> dict[str, str]:
    target = temporal_env.client.service_client.config.target_host
    return process_env(
        target,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_TOOL_MODULES=CONTROL_TOOL_MODULES,
        COLUMNS="200",
    )


def unique(name: str) -> str:
    """A pipeline name no other test's runs share (one server serves the whole session)."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


def approve_pipeline(name: str = "cli-approve") -> PipelineSpec:
    return pipeline(
        step("first", "echo", args={"value": 1}),
        approval(
            "deploy",
            message="Deploy build {{ steps.first.output }}?",
            depends_on=["first"],
            timeout="1h",  # a timer in the history too
        ),
        step("after", "echo", args={"value": "done"}, depends_on=["deploy"]),
        name=name,
    )


async def read_until(process: asyncio.subprocess.Process, text: str, timeout: float = 20) -> str:
    """Its stdout up to and including the first line holding `text`."""
    assert process.stdout is not None
    seen = ""
    async with asyncio.timeout(timeout):
        while text not in seen:
            line = await process.stdout.readline()
            assert line, f"the process ended before printing {text!r}; it printed:\n{seen}"
            seen += line.decode()
    return seen


async def waiting_run(
    stepflow: StepflowClient, temporal_client: Client, spec: PipelineSpec, step_id: str
) -> str:
    run = await stepflow.start_pipeline(spec)
    await wait_step(temporal_client.get_workflow_handle(run.workflow_id), step_id, "WAITING")
    return run.workflow_id


async def test_status_shows_a_table_and_json(
    worker: None, stepflow: StepflowClient, temporal_client: Client, cli_env: dict[str, str]
) -> None:
    workflow_id = await waiting_run(stepflow, temporal_client, approve_pipeline(), "deploy")

    table = ok(await stepflow_cli(cli_env, "status", workflow_id)).stdout
    assert re.search(r"first\s+│\s+SUCCEEDED", table), table
    assert re.search(r"deploy\s+│\s+WAITING for approval", table), table
    assert "Deploy build 1?" in table
    assert re.search(r"after\s+│\s+PENDING", table), table
    assert "1 succeeded, 1 waiting, 1 pending" in table
    assert f"run {workflow_id} WAITING for " in table
    run_id = (await stepflow.describe(workflow_id)).run_id
    assert (
        f"Web UI: http://localhost:8233/namespaces/default/workflows/{workflow_id}/{run_id}/history"
        in table
    )

    state = json.loads(ok(await stepflow_cli(cli_env, "status", workflow_id, "--json")).stdout)
    assert state["status"] == "WAITING"
    assert state["counts"] == {"SUCCEEDED": 1, "WAITING": 1, "PENDING": 1}
    deploy = state["steps"][1]
    assert (deploy["id"], deploy["waiting_for"], deploy["message"]) == (
        "deploy",
        "approval",
        "Deploy build 1?",
    )
    await stepflow.terminate(workflow_id)


async def test_approve_with_a_comment_and_watch_exits_0(
    worker: None, stepflow: StepflowClient, temporal_client: Client, cli_env: dict[str, str]
) -> None:
    workflow_id = await waiting_run(stepflow, temporal_client, approve_pipeline(), "deploy")
    watcher = await cli_process(cli_env, "watch", workflow_id, "--interval", "0.2")
    seen = await read_until(watcher, "WAITING for approval")  # the watcher saw the wait

    answer = ok(
        await stepflow_cli(cli_env, "approve", workflow_id, "deploy", "--comment", "ship it")
    )
    assert answer.stdout.strip() and "\n" not in answer.stdout.strip()

    rest, stderr = await asyncio.wait_for(watcher.communicate(), 30)
    assert watcher.returncode == 0, stderr.decode()
    watched = seen + rest.decode()
    # One line per change: `+1.23s  deploy  WAITING for approval: ...`.
    for change in (
        r"deploy\s+WAITING for approval: Deploy build 1\?",
        r"deploy\s+SUCCEEDED",
        r"after\s+SUCCEEDED",
    ):
        assert re.search(rf"^\s*\+[\d.]+s\s+{change}$", watched, re.MULTILINE), watched
    assert f"run {workflow_id} SUCCEEDED in" in watched  # the final table's run line
    result = await stepflow.get_result(workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("deploy") == {"approved": True, "comment": "ship it", "by": "user"}


async def test_reject_fails_the_step_and_watch_exits_1(
    worker: None, stepflow: StepflowClient, temporal_client: Client, cli_env: dict[str, str]
) -> None:
    workflow_id = await waiting_run(stepflow, temporal_client, approve_pipeline(), "deploy")
    # A request the run refuses: one line, exit 2, and the run still waits.
    one_error_line(await stepflow_cli(cli_env, "approve", workflow_id, "after"), "after")

    ok(await stepflow_cli(cli_env, "reject", workflow_id, "deploy", "-c", "not today"))
    watched = await stepflow_cli(cli_env, "watch", workflow_id)
    assert watched.code == 1, watched.stderr
    assert "FAILED" in watched.stdout and "not today" in watched.stdout
    result = await stepflow.get_result(workflow_id)
    deploy = result.step("deploy")
    assert (deploy.status, deploy.error_type) == (StepStatus.FAILED, "Rejected")
    assert "not today" in (deploy.error or "")


async def test_watch_on_a_terminal_redraws_in_place_then_prints_the_table(
    worker: None, stepflow: StepflowClient, cli_env: dict[str, str]
) -> None:
    spec = pipeline(
        step("a", "fail", args={"message": "it broke", "non_retryable": True}), name="cli-live"
    )
    run = await stepflow.start_pipeline(spec)
    watched = await stepflow_cli({**cli_env, "TTY_COMPATIBLE": "1"}, "watch", run.workflow_id)
    assert watched.code == 1, watched.stderr
    assert "\x1b[2K" in watched.stdout  # the live view erased its lines: a redraw, not a log
    assert not re.search(r"^\s*\+[\d.]+s\s+a\s+FAILED", watched.stdout, re.MULTILINE)
    assert "it broke" in watched.stdout and f"run {run.workflow_id} FAILED" in watched.stdout


async def test_run_on_a_terminal_shows_the_steps_live_then_the_result(
    worker: None, cli_env: dict[str, str], tmp_path: Path, journal: str
) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(
        "name: cli-run-live\nsteps:\n"
        f"  - {{id: first, kind: tool, tool: record, args: {{journal: {journal}, seconds: 2}}}}\n"
        f"  - {{id: second, kind: tool, tool: record, args: {{journal: {journal}}}, "
        "depends_on: [first]}\n"
    )
    done = await stepflow_cli({**cli_env, "TTY_COMPATIBLE": "1"}, "run", str(path))
    assert done.code == 0, done.stderr
    # The live view (on stderr, so stdout stays the result) drew the steps and erased itself.
    assert "\x1b[2K" in done.stderr
    assert "first" in done.stderr and "RUNNING" in done.stderr
    assert "SUCCEEDED" in done.stdout and "second" in done.stdout


async def test_input_checks_the_value_against_the_schema(
    worker: None, stepflow: StepflowClient, temporal_client: Client, cli_env: dict[str, str]
) -> None:
    spec = pipeline(
        human_input("budget", message="Budget?", schema={"type": "integer", "minimum": 1}),
        name="cli-input",
    )
    workflow_id = await waiting_run(stepflow, temporal_client, spec, "budget")

    one_error_line(
        await stepflow_cli(cli_env, "input", workflow_id, "budget", "lots"),
        "'lots' is not of type 'integer'",
    )
    one_error_line(
        await stepflow_cli(cli_env, "input", workflow_id, "budget", "0"),
        "0 is less than the minimum of 1",
    )
    ok(await stepflow_cli(cli_env, "input", workflow_id, "budget", "1200"))
    result = await stepflow.get_result(workflow_id)
    assert result.output("budget") == 1200


async def test_input_for_a_string_says_how_to_quote_a_value_that_reads_as_json(
    worker: None, stepflow: StepflowClient, temporal_client: Client, cli_env: dict[str, str]
) -> None:
    spec = pipeline(human_input("code", schema={"type": "string"}), name="cli-input-text")
    workflow_id = await waiting_run(stepflow, temporal_client, spec, "code")

    one_error_line(
        await stepflow_cli(cli_env, "input", workflow_id, "code", "42"),
        "42 is not of type 'string'",
        """(to send the text '42', quote it as JSON: '"42"')""",
    )
    ok(await stepflow_cli(cli_env, "input", workflow_id, "code", '"42"'))
    assert (await stepflow.get_result(workflow_id)).output("code") == "42"


async def test_piped_tables_are_never_cut_at_80_columns(
    worker: None, stepflow: StepflowClient, temporal_client: Client, cli_env: dict[str, str]
) -> None:
    name = unique("a-pipeline-name-long-enough-to-push-the-listing-past-eighty-columns")
    spec = pipeline(approval("ok"), name=name)
    workflow_id = await waiting_run(stepflow, temporal_client, spec, "ok")
    env = {k: v for k, v in cli_env.items() if k != "COLUMNS"}  # as a pipe to another program

    listed = await eventually(
        lambda: stepflow_cli(env, "list", "--pipeline", name),
        lambda done: workflow_id in done.stdout,
        "the run in the listing",
    )

    row = next(line for line in listed.stdout.splitlines() if workflow_id in line)
    assert name in row and len(row) > 80, row


async def test_pause_holds_new_steps_until_resume(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    cli_env: dict[str, str],
    journal: str,
    tmp_path: Path,
) -> None:
    gate = Gate(journal, tmp_path, "a")
    spec = pipeline(gate_step("a", gate), step("b", "echo", depends_on=["a"]), name="cli-pause")
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_started(journal, "a")

    ok(await stepflow_cli(cli_env, "pause", run.workflow_id))
    one_error_line(await stepflow_cli(cli_env, "pause", run.workflow_id), "already paused")
    gate.open()  # the running step finishes; the next one does not start
    state = await wait_step(handle, "a", "SUCCEEDED")
    await asyncio.sleep(0.5)
    state = await stepflow.status(run.workflow_id)
    assert state.status.value == "PAUSED" and state.step("b").status is StepStatus.PENDING

    ok(await stepflow_cli(cli_env, "resume", run.workflow_id))
    assert (await stepflow.get_result(run.workflow_id)).status is PipelineStatus.SUCCEEDED


async def test_cancel_ends_the_run_and_says_what_completed(
    worker: None,
    stepflow: StepflowClient,
    cli_env: dict[str, str],
    journal: str,
    tmp_path: Path,
) -> None:
    spec = pipeline(
        step("a", "echo", args={"value": 1}),
        gate_step("b", Gate(journal, tmp_path, "b"), depends_on=["a"]),
        name="cli-cancel",
    )
    run = await stepflow.start_pipeline(spec)
    await wait_started(journal, "b")

    done = ok(await stepflow_cli(cli_env, "cancel", run.workflow_id))
    assert f"run {run.workflow_id} CANCELLED; steps completed: a" in done.stdout
    summary = await stepflow.describe(run.workflow_id)
    assert (summary.status, summary.execution_status) == ("CANCELLED", "CANCELED")
    one_error_line(await stepflow_cli(cli_env, "cancel", run.workflow_id), "already ended")


async def test_cancel_terminate_and_list_by_status_and_pipeline(
    worker: None, stepflow: StepflowClient, temporal_client: Client, cli_env: dict[str, str]
) -> None:
    name = unique("cli-list")
    finished = await stepflow.start_pipeline(pipeline(step("a", "echo"), name=name))
    await stepflow.get_result(finished.workflow_id)
    waiting = await waiting_run(stepflow, temporal_client, approve_pipeline(name), "deploy")
    stuck = await waiting_run(stepflow, temporal_client, approve_pipeline(name), "deploy")

    done = ok(await stepflow_cli(cli_env, "cancel", stuck, "--terminate", "--reason", "stuck"))
    assert f"terminated run {stuck}" in done.stdout
    status = ok(await stepflow_cli(cli_env, "status", stuck)).stdout
    assert f"run {stuck} TERMINATED (last reported WAITING)" in status

    async def listed() -> dict[str, str]:  # visibility is eventually consistent
        return {r.workflow_id: r.status for r in await stepflow.list_runs(pipeline=name)}

    expected = {finished.workflow_id: "SUCCEEDED", waiting: "WAITING", stuck: "TERMINATED"}
    await eventually(listed, lambda runs: runs == expected, "the three runs listed")

    def ids(done: Completed) -> set[str]:
        return {run["workflow_id"] for run in json.loads(ok(done).stdout)}

    assert ids(await stepflow_cli(cli_env, "list", "--pipeline", name, "--json")) == set(expected)
    for status_filter, workflow_id in (
        ("waiting", waiting),
        ("SUCCEEDED", finished.workflow_id),
        ("TERMINATED", stuck),
    ):
        found = await stepflow_cli(
            cli_env, "list", "--pipeline", name, "--status", status_filter, "--json"
        )
        assert ids(found) == {workflow_id}, status_filter
    table = ok(await stepflow_cli(cli_env, "list", "--pipeline", name)).stdout
    assert re.search(rf"{stuck}\s+{name}\s+TERMINATED", table), table
    await stepflow.terminate(waiting)


async def test_list_records_say_how_a_closed_run_ended(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    name = unique("cli-records")
    workflow_id = await waiting_run(stepflow, temporal_client, approve_pipeline(name), "deploy")
    await stepflow.terminate(workflow_id, "stuck")

    async def listed() -> list[RunSummary]:
        return await stepflow.list_runs(pipeline=name)

    [run] = await eventually(
        listed, lambda runs: [r.status for r in runs] == ["TERMINATED"], "terminated run listed"
    )
    assert run.workflow_id == workflow_id and run.pipeline == name
    assert run.stepflow_status == "WAITING"  # what the run last said; `status` has the truth
    assert run.execution_status == "TERMINATED" and run.close_time is not None


async def test_history_names_steps_retries_and_requests(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    cli_env: dict[str, str],
    journal: str,
) -> None:
    spec = pipeline(
        step(
            "fetch",
            "flaky",
            args={"journal": journal, "succeed_on": 2},
            retry={"initial_interval": "100ms"},
        ),
        approval("ok", depends_on=["fetch"], timeout="1h"),
        name="cli-history",
    )
    workflow_id = await waiting_run(stepflow, temporal_client, spec, "ok")
    await stepflow.approve(workflow_id, "ok", comment="fine")
    await stepflow.get_result(workflow_id)

    lines = ok(await stepflow_cli(cli_env, "history", workflow_id)).stdout.splitlines()
    text = "\n".join(lines)
    assert re.search(r"^\s+\+0\.\d\ds\s+run\s+started \(pipeline cli-history\)$", lines[0]), text
    assert re.search(
        r"fetch · tool flaky\s+retrying: attempt 2 started; attempt 1 failed: .*flaky failure on attempt 1",
        text,
    ), text
    assert re.search(r"fetch · tool flaky\s+completed \(attempt 2\)", text), text
    assert re.search(r"ok · update approve\s+comment=fine -> ", text), text
    assert re.search(r"\s+run\s+completed$", lines[-1]), text

    events = json.loads(ok(await stepflow_cli(cli_env, "history", workflow_id, "--json")).stdout)
    assert events[0]["subject"] == "run" and events[-1]["what"] == "completed"
    assert all(e["elapsed_seconds"] >= 0 for e in events)


async def test_ui_prints_the_runs_link(
    worker: None, stepflow: StepflowClient, cli_env: dict[str, str]
) -> None:
    run = await stepflow.start_pipeline(pipeline(step("a", "echo"), name="cli-ui"))
    done = ok(await stepflow_cli(cli_env, "ui", run.workflow_id))
    assert done.stdout.strip() == run.ui_url


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["watch"],
        ["approve", "{id}", "deploy"],
        ["reject", "{id}", "deploy", "--comment", "no"],
        ["input", "{id}", "budget", "3"],
        ["pause"],
        ["resume"],
        ["cancel"],
        ["cancel", "{id}", "--terminate"],
        ["history"],
        ["ui"],
    ],
    ids=lambda c: "-".join(a for a in c if not a.startswith("{")),
)
async def test_an_unknown_run_is_one_line_and_exit_2(
    cli_env: dict[str, str], command: list[str]
) -> None:
    workflow_id = f"no-such-run-{uuid.uuid4().hex[:6]}"
    args: list[Any] = [a.format(id=workflow_id) for a in command]
    if "{id}" not in command:
        args.append(workflow_id)
    done = await stepflow_cli(cli_env, *args)
    one_error_line(done, f"no run with id {workflow_id!r}")


def test_the_table_says_retrying_attempt_and_the_agent_call_running() -> None:
    start = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    state = PipelineState(
        workflow_id="w-1",
        pipeline="p",
        status=RunStatus.RUNNING,
        steps=[
            StepRecord(id="fetch", kind="tool", status=StepStatus.RETRYING, attempts=3,
                       started_at=start),
            StepRecord(id="write", kind="agent", status=StepStatus.RUNNING, model="offline",
                       model_call=3, max_model_calls=10, started_at=start,
                       usage=TokenUsage(total_tokens=1234, model_calls=2)),
            StepRecord(id="ok", kind="approval", status=StepStatus.WAITING,
                       waiting_for="approval", message="Ship it?", started_at=start),
        ],
        counts={StepStatus.RETRYING: 1, StepStatus.RUNNING: 1, StepStatus.WAITING: 1},
        usage=TokenUsage(),
        started_at=start,
        as_of=start + timedelta(seconds=5),
    )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(steps_table(state.pipeline, state.steps, now=state.as_of))
    text = console.export_text()
    assert re.search(r"fetch\s+│\s+RETRYING \(attempt 3\)\s+│\s+3\s+│\s+5\.0s", text), text
    assert re.search(r"write\s+│\s+RUNNING\s+│.*│\s+offline, call 3/10, 1,234 tok", text), text
    assert re.search(r"ok\s+│\s+WAITING for approval\s+│.*│\s+Ship it\?", text), text
    assert counts_line(state) == "1 running, 1 retrying, 1 waiting"
