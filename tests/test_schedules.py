"""`stepflow schedule ...` and `PipelineSchedules` against the real server: schedules that start
real pipeline runs."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import RunSummary, StepflowClient
from stepflow.client.schedules import (
    PipelineSchedules,
    ScheduleError,
    ScheduleNotFound,
    ScheduleSummary,
)
from stepflow.workflows import control
from stepflow.workflows.models import PipelineStatus
from tests.support.control_tools import eventually
from tests.support.processes import ok, one_error_line, process_env, stepflow_cli


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, task_queue: str) -> dict[str, str]:
    target = temporal_env.client.service_client.config.target_host
    return process_env(
        target,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_TOOL_MODULES="tests.support.tools",
        COLUMNS="200",
    )


@pytest.fixture
def name() -> str:
    """The pipeline's name, unique: one server serves the whole session."""
    return f"sched-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def pipeline_file(tmp_path: Path, name: str) -> str:
    path = tmp_path / "scheduled.yaml"
    path.write_text(
        f"""
name: {name}
inputs:
  count: {{type: integer, default: 1}}
steps:
  - {{id: a, kind: tool, tool: echo, args: {{value: "{{{{ inputs.count }}}}"}}}}
"""
    )
    return str(path)


@pytest.fixture
def schedules(stepflow: StepflowClient) -> PipelineSchedules:
    return PipelineSchedules(stepflow)


async def runs_of(stepflow: StepflowClient, pipeline: str, count: int = 1) -> list[RunSummary]:
    async def listed() -> list[RunSummary]:
        return await stepflow.list_runs(pipeline=pipeline)

    return await eventually(listed, lambda runs: len(runs) >= count, f"{count} run(s) listed")


async def listed_schedule(
    schedules: PipelineSchedules, schedule_id: str, paused: bool
) -> ScheduleSummary:
    async def listed() -> list[ScheduleSummary]:
        return [s for s in await schedules.list_schedules() if s.schedule_id == schedule_id]

    [found] = await eventually(
        listed, lambda found: [s.paused for s in found] == [paused], f"{schedule_id} listed"
    )
    return found


async def test_create_trigger_list_pause_unpause_delete(
    worker: None,
    stepflow: StepflowClient,
    schedules: PipelineSchedules,
    cli_env: dict[str, str],
    pipeline_file: str,
    name: str,
) -> None:
    schedule_id = f"{name}-hourly"
    created = ok(
        await stepflow_cli(
            cli_env, "schedule", "create", pipeline_file, "--every", "1h",
            "--input", "count=3", "--id", schedule_id,
        )
    )  # fmt: skip
    assert re.search(
        rf"created schedule {schedule_id}: pipeline {name} every 1h; next run \d{{4}}-",
        created.stdout,
    ), created.stdout

    # A trigger starts a real run, with the inputs given at creation.
    ok(await stepflow_cli(cli_env, "schedule", "trigger", schedule_id))
    [run] = await runs_of(stepflow, name)
    assert run.workflow_id.startswith(f"{schedule_id}-")
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED and result.output("a") == 3

    await listed_schedule(schedules, schedule_id, paused=False)
    listed = json.loads(ok(await stepflow_cli(cli_env, "schedule", "list", "--json")).stdout)
    [mine] = [s for s in listed if s["schedule_id"] == schedule_id]
    assert (mine["pipeline"], mine["when"], mine["paused"]) == (name, "every 1h", False)

    ok(await stepflow_cli(cli_env, "schedule", "pause", schedule_id))
    assert (await schedules.describe(schedule_id)).paused
    await listed_schedule(schedules, schedule_id, paused=True)
    table = ok(await stepflow_cli(cli_env, "schedule", "list")).stdout
    assert re.search(rf"{schedule_id}\s+{name}\s+every 1h\s+paused", table), table

    ok(await stepflow_cli(cli_env, "schedule", "unpause", schedule_id))
    assert not (await schedules.describe(schedule_id)).paused

    done = ok(await stepflow_cli(cli_env, "schedule", "delete", schedule_id))
    assert f"deleted schedule {schedule_id}" in done.stdout
    with pytest.raises(ScheduleNotFound):
        await schedules.describe(schedule_id)
    for action in ("delete", "pause", "unpause", "trigger"):
        one_error_line(
            await stepflow_cli(cli_env, "schedule", action, schedule_id),
            f"stepflow: no schedule with id {schedule_id!r}",
        )


async def test_a_schedule_starts_runs_by_itself(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    schedules: PipelineSchedules,
    pipeline_file: str,
    name: str,
) -> None:
    summary = await schedules.create(pipeline_file, every=timedelta(seconds=1))
    assert (summary.schedule_id, summary.pipeline, summary.when) == (
        f"{name}-schedule",
        name,
        "every 1s",
    )
    try:
        runs = await runs_of(stepflow, name)
    finally:
        await schedules.delete(summary.schedule_id)
    run = runs[-1]
    assert run.workflow_id.startswith(f"{name}-schedule-")
    result = await stepflow.get_result(run.workflow_id)
    assert result.output("a") == 1
    # Scheduled runs carry the same search attributes and memo as `stepflow run`.
    described = await temporal_client.get_workflow_handle(run.workflow_id).describe()
    assert described.typed_search_attributes.get(control.PIPELINE_ATTRIBUTE) == name
    assert (await described.memo())["pipeline"] == name


async def test_cron_schedules_and_bad_cron_expressions(
    stepflow: StepflowClient,
    schedules: PipelineSchedules,
    cli_env: dict[str, str],
    pipeline_file: str,
    name: str,
) -> None:
    done = ok(
        await stepflow_cli(cli_env, "schedule", "create", pipeline_file, "--cron", "0 9 * * 1-5")
    )
    assert f"pipeline {name} cron 0 9 * * 1-5" in done.stdout
    summary = await schedules.describe(f"{name}-schedule")
    assert summary.next_run is not None
    next_run = summary.next_run.astimezone(UTC)
    assert (next_run.hour, next_run.minute) == (9, 0) and next_run.weekday() < 5

    # The same id again: one line, nothing replaced.
    one_error_line(
        await stepflow_cli(cli_env, "schedule", "create", pipeline_file, "--every", "1h"),
        f"a schedule with id '{name}-schedule' exists already",
    )
    await schedules.delete(f"{name}-schedule")

    one_error_line(
        await stepflow_cli(cli_env, "schedule", "create", pipeline_file, "--cron", "61 * * * *"),
        "stepflow: invalid schedule (cron 61 * * * *): Minute is not in range [0-59]",
    )
    one_error_line(
        await stepflow_cli(cli_env, "schedule", "create", pipeline_file, "--cron", "every day"),
        "stepflow: invalid schedule (cron every day): ",
    )
    one_error_line(
        await stepflow_cli(cli_env, "schedule", "create", pipeline_file, "--every", "5"),
        "--every '5': use a number and a unit",
    )
    with pytest.raises(ScheduleError, match="must be 1s or longer"):
        await schedules.create(pipeline_file, every=timedelta(milliseconds=10))
    with pytest.raises(ScheduleError, match="exactly one of"):
        await schedules.create(pipeline_file)


async def test_create_checks_the_pipeline_and_inputs_first(
    schedules: PipelineSchedules, cli_env: dict[str, str], pipeline_file: str, name: str
) -> None:
    one_error_line(
        await stepflow_cli(
            cli_env, "schedule", "create", pipeline_file, "--every", "1h", "--input", "count=many"
        ),
        "inputs.count: expected integer",
        prefix=pipeline_file,
    )
    broken = Path(pipeline_file).with_name("broken.yaml")
    broken.write_text(Path(pipeline_file).read_text().replace("tool: echo", "tool: ech0"))
    done = await stepflow_cli(cli_env, "schedule", "create", str(broken), "--every", "1h")
    assert done.code == 2 and "unknown tool 'ech0'" in done.stderr
    with pytest.raises(ScheduleNotFound):
        await schedules.describe(f"{name}-schedule")
