"""What a new user runs into in the first hour: each mistake gets a clear answer, not silence."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.client.cli import main
from stepflow.client.yaml_reader import read_yaml_file
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.models import StepStatus
from tests.support.helpers import pipeline, step
from tests.support.processes import (
    ROOT,
    cli_process,
    ok,
    one_error_line,
    process_env,
    stepflow_cli,
    tool_worker_env,
)

PIPELINE = """
name: first-hour
steps:
  - {id: a, kind: tool, tool: echo, args: {value: 1}}
"""


async def test_run_says_within_seconds_that_no_worker_serves_its_queue_and_goes_on_when_one_comes(
    temporal_env: WorkflowEnvironment,
    temporal_client: Client,
    settings: Settings,
    task_queue: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    env = tool_worker_env(temporal_env.client.service_client.config.target_host, task_queue)
    process = await cli_process(env, "run", str(path))
    assert process.stderr is not None
    started = time.monotonic()
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            raw = await asyncio.wait_for(process.stderr.readline(), 30)  # type: ignore[union-attr]
            assert raw, f"the command ended before saying {text!r}:\n" + "".join(lines)
            lines.append(raw.decode())

    await read_until("no worker has picked this run up")
    noticed = time.monotonic() - started
    warning = next(line for line in lines if "no worker" in line)
    assert f"task queue {task_queue!r}" in warning and "stepflow dev start" in warning
    assert noticed < 15, noticed  # a few seconds after the start, not never

    # The run was started all along: a worker that comes now runs it to the end.
    async with build_worker(
        temporal_client, settings, tools=load_tool_modules(settings.tool_modules)
    ):
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, "".join(lines)
    assert "SUCCEEDED" in stdout.decode()


async def test_starting_a_second_run_with_a_running_runs_id_is_one_line(
    worker: None, temporal_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    path = tmp_path / "wait.yaml"
    path.write_text("name: waits\nsteps:\n  - {id: ok, kind: approval}\n")
    env = tool_worker_env(temporal_env.client.service_client.config.target_host, task_queue)
    ok(await stepflow_cli(env, "run", str(path), "--id", "twice", "--no-wait"))

    again = await stepflow_cli(env, "run", str(path), "--id", "twice")

    one_error_line(again, "'twice' is still running", "stepflow result twice")


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b'name: x\ndescription: "caf\xe9"\nsteps: []\n', "is not UTF-8", id="latin-1"),
        pytest.param(
            b"name: x\nsteps: []\nname: y\n",
            "line 3, column 1: the key 'name' is written twice (first at line 1)",
            id="duplicate-key",
        ),
        pytest.param(
            b"name: x\nsteps:\n  - id: a\n    kind: tool\n    tool: echo\n    kind: agent\n",
            "the key 'kind' is written twice",
            id="duplicate-key-in-a-step",
        ),
        pytest.param(b"a: " + b"[" * 5000 + b"]" * 5000, "nested more than 100", id="deep"),
        pytest.param(BILLION_LAUGHS.encode(), "expands to more than 200,000", id="alias-bomb"),
        pytest.param(b"a: &a [1, *a]\n", "refers to the value that contains it", id="recursive"),
        pytest.param(b"x" * (11 * 1024 * 1024), "is over 10 MB", id="huge"),
    ],
)
def test_validate_refuses_unsafe_yaml_fast_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(content)
    started = time.monotonic()

    code = main(["validate", str(path)])

    took = time.monotonic() - started
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: "), lines
    assert expected in lines[0] and len(lines[0]) < 400, lines[0]
    assert took < 5, took  # refused before building anything from the file


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: merged\ndefaults_: &d {kind: tool, tool: echo}\n"
        "steps:\n  - {<<: *d, id: a}\n  - {<<: *d, id: b, depends_on: [a]}\n"
    )
    assert read_yaml_file(path)["steps"][1] == {
        "kind": "tool",
        "tool": "echo",
        "id": "b",
        "depends_on": ["a"],
    }


@pytest.mark.parametrize(
    ("value", "near"),
    [
        ("{{ steps.a.output }", "{{ steps.a.output }"),
        ("got {{ steps.a.output }} and {{ steps.a.output", "{{ steps.a.output"),
        ("stray }} here", "}} here"),
    ],
)
def test_a_half_written_template_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, near: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: half\nsteps:\n  - {id: a, kind: tool, tool: echo}\n"
        f"  - id: b\n    kind: tool\n    tool: echo\n    depends_on: [a]\n"
        f"    args: {{value: {json.dumps(value)}}}\n"
    )

    assert main(["validate", str(path)]) == 2

    line = capsys.readouterr().err.strip()
    assert (
        line
        == f"{path}: step 'b': args.value: an unclosed template near {near!r}: write {{{{ ... }}}}"
    )


def test_validate_warns_of_a_model_name_no_configuration_knows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_MODELS", '{"planner": {"base_url": "http://127.0.0.1:1/v1"}}')
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: models\nsteps:\n"
        "  - {id: a, kind: agent, model: planer, instructions: x}\n"
        "  - {id: b, kind: agent, model: planner, instructions: x}\n"
    )

    assert main(["validate", str(path)]) == 0  # a warning: the workers may know it

    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"{path}: warning: step 'a': model 'planer' is not in STEPFLOW_MODELS (did you mean "
        "'planner'?); it goes to the default endpoint under that name"
    )
    assert "is valid" in captured.out


def test_version_validate_json_and_the_schema_of_pipeline_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"stepflow {importlib.metadata.version('stepflow')}"

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - {id: a, kind: tool, tool: nope}\n")
    assert main(["validate", "--json", str(bad)]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert {"step": "a", "field": "tool"}.items() <= report["issues"][0].items()
    assert "unknown tool 'nope'" in report["issues"][0]["message"]

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = Draft202012Validator(schema)
    # Every example checks against it, and the mistakes editors should catch are caught.
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        errors = [e.message for e in validator.iter_errors(read_yaml_file(example))]
        assert errors == [], (example.name, errors)
    assert not validator.is_valid({"name": "x", "steps": [{"id": "a", "kind": "tol"}]})
    assert not validator.is_valid({"name": "x", "steps": [], "stepz": []})


def test_an_array_input_that_is_not_json_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: arrays\ninputs: {x: {type: array}}\n"
        "steps:\n  - {id: a, kind: tool, tool: echo, args: {value: '{{ inputs.x }}'}}\n"
    )

    assert main(["run", str(path), "--input", 'x=["a"']) == 2

    assert capsys.readouterr().err.strip() == (
        """stepflow: --input x: '["a"' is not valid JSON (Expecting ',' delimiter at column 5); """
        "an array input is read as JSON"
    )


async def test_a_warning_on_a_terminal_is_one_plain_line(
    temporal_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: routed\nsteps:\n  - {id: a, kind: agent, instructions: hi}\n")
    env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_MODEL_TASK_QUEUE=f"{task_queue}-models",  # no worker polls it
        STEPFLOW_LOG_FORMAT="auto",
    )
    leader, follower = os.openpty()  # stderr is a terminal; stdout stays a pipe
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from stepflow.client.cli import entry; entry()",
            "run",
            str(path),
            "--no-wait",
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        await asyncio.wait_for(process.wait(), 60)
    finally:
        os.close(follower)
    with os.fdopen(leader, "rb") as terminal:
        shown = terminal.read1(65536).decode()
    assert process.returncode == 0, shown
    warnings = [line for line in shown.splitlines() if "warning" in line]
    assert warnings == [
        f"stepflow: warning: task queue without workers (task_queue={task_queue}-models, "
        "runs=model calls): the run waits there until a worker serves it: start one with the "
        "same STEPFLOW_* routing settings (python worker.py --serve models / tools:QUEUE)"
    ], shown


async def test_a_tool_the_worker_does_not_have_fails_at_once_naming_tool_queue_and_fix(
    temporal_client: Client, settings: Settings, stepflow: StepflowClient, task_queue: str
) -> None:
    # The client knows `record` (tests.support.tools); this worker was started without it.
    lacking = [t for t in load_tool_modules(settings.tool_modules) if t.name != "record"]
    async with build_worker(temporal_client, settings, tools=lacking):
        run = await stepflow.start_pipeline(
            pipeline(step("a", "record", args={"journal": "/dev/null"}))
        )
        result = await stepflow.get_result(run.workflow_id)

    record = result.step("a")
    assert (record.status, record.error_type, record.attempts) == (
        StepStatus.FAILED,
        "ToolNotRegistered",
        1,
    )
    assert record.error is not None
    assert f"tool 'record' is not registered on the worker of task queue {task_queue!r}" in (
        record.error
    )
    assert "STEPFLOW_TOOL_MODULES where the worker runs" in record.error
