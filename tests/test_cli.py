"""The `stepflow` command end to end: a real process, a real server, real exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.processes import one_error_line, process_env, stepflow_cli, tool_worker_env

PIPELINE = """
name: cli-demo
inputs:
  count: {type: integer, default: 2}
steps:
  - {id: a, kind: tool, tool: echo, args: {value: "{{ inputs.count }}"}}
  - {id: b, kind: tool, tool: echo, args: {value: "got {{ steps.a.output }}"}, depends_on: [a]}
"""

FAILING = """
name: cli-fails
steps:
  - {id: a, kind: tool, tool: fail, args: {message: "it broke", non_retryable: true}}
  - {id: b, kind: tool, tool: echo, depends_on: [a]}
"""


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, task_queue: str) -> dict[str, str]:
    target = temporal_env.client.service_client.config.target_host
    return tool_worker_env(target, task_queue)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, text in {"good": PIPELINE, "failing": FAILING}.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        paths[name] = str(path)
    return paths


async def test_run_waits_and_prints_the_result_as_json(
    worker: None, cli_env: dict[str, str], files: dict[str, str]
) -> None:
    done = await stepflow_cli(cli_env, "run", files["good"], "--input", "count=5", "--json")
    assert done.code == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "SUCCEEDED"
    assert [s["output"] for s in result["steps"]] == [5, "got 5"]
    workflow_id = re.search(r"started (\S+)", done.stderr).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(r"cli-demo-[0-9a-f]{8}", workflow_id)
    assert f"http://localhost:8233/namespaces/default/workflows/{workflow_id}/" in done.stderr


async def test_run_prints_a_table_by_default(
    worker: None, cli_env: dict[str, str], files: dict[str, str]
) -> None:
    done = await stepflow_cli(cli_env, "run", files["good"], "--id", "my-run-1")
    assert done.code == 0, done.stderr
    assert "started my-run-1" in done.stderr
    assert "SUCCEEDED" in done.stdout and "got 2" in done.stdout
    assert "pipeline cli-demo succeeded" in done.stdout


async def test_a_failed_pipeline_exits_1(
    worker: None, cli_env: dict[str, str], files: dict[str, str]
) -> None:
    done = await stepflow_cli(cli_env, "run", files["failing"])
    assert done.code == 1
    assert "FAILED" in done.stdout and "it broke" in done.stdout
    assert "SKIPPED" in done.stdout


async def test_no_wait_then_result(
    worker: None, cli_env: dict[str, str], files: dict[str, str]
) -> None:
    started = await stepflow_cli(
        cli_env, "run", files["good"], "--no-wait", "--json", "--id", "later-1"
    )
    assert started.code == 0, started.stderr
    assert json.loads(started.stdout)["workflow_id"] == "later-1"
    done = await stepflow_cli(cli_env, "result", "later-1", "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "count=many"], "inputs.count: expected integer"),
        (["--input", "colour=red"], "unknown input 'colour'"),
        (["--input", "count"], "--input 'count': write NAME=VALUE"),
    ],
)
async def test_bad_input_exits_2_before_starting(
    cli_env: dict[str, str], files: dict[str, str], args: list[str], message: str
) -> None:
    done = await stepflow_cli(cli_env, "run", files["good"], *args)
    assert done.code == 2
    assert message in done.stderr
    assert "started" not in done.stderr


async def test_a_wrong_input_is_refused_without_a_server(files: dict[str, str]) -> None:
    """The inputs are checked before connecting: the mistake, not the missing server."""
    done = await stepflow_cli(process_env("127.0.0.1:1"), "run", files["good"], "--input", "cont=3")
    one_error_line(done, "unknown input 'cont' (did you mean 'count'?)", prefix=files["good"])


async def test_result_of_an_unknown_run_exits_2(cli_env: dict[str, str]) -> None:
    done = await stepflow_cli(cli_env, "result", "no-such-run")
    assert done.code == 2
    assert "no run with id 'no-such-run'" in done.stderr


async def test_an_unreachable_server_is_one_clear_line(files: dict[str, str]) -> None:
    done = await stepflow_cli(process_env("127.0.0.1:1"), "run", files["good"])
    assert done.code == 2
    assert "cannot connect to Temporal at 127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("STEPFLOW_MODEL_CALLS_PER_SECOND", "fast", "STEPFLOW_MODEL_CALLS_PER_SECOND"),
        ("STEPFLOW_MODELS", "{not json", 'field "models"'),
    ],
)
async def test_bad_settings_are_one_line_not_a_traceback(
    cli_env: dict[str, str], variable: str, value: str, expected: str
) -> None:
    done = await stepflow_cli({**cli_env, variable: value}, "list")
    one_error_line(done, "invalid settings", expected)


async def test_usage_errors_exit_2(cli_env: dict[str, str]) -> None:
    done = await stepflow_cli(cli_env, "frobnicate")
    assert done.code == 2
    assert "invalid choice" in done.stderr


async def test_tools_lists_builtins_and_user_tools(cli_env: dict[str, str]) -> None:
    done = await stepflow_cli(cli_env, "tools", "--json")
    assert done.code == 0, done.stderr
    names = {t["name"] for t in json.loads(done.stdout)}
    assert {"read_file", "write_file", "http_get", "echo", "flaky"} <= names


AGENT = """
name: cli-agent
steps:
  - id: summarize
    kind: agent
    instructions: Summarize the input in one sentence; count its words with word_count.
    input: {text: "the quick brown fox"}
    tools: [word_count]
"""


async def test_run_shows_which_model_answered_and_the_tokens(
    worker: None, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT)
    done = await stepflow_cli({**cli_env, "COLUMNS": "200"}, "run", str(path))
    assert done.code == 0, done.stderr
    assert "offline, 2 calls, 1 tool call" in done.stdout
    assert re.search(r"2 model calls, [\d,]+ prompt \+ [\d,]+ completion", done.stdout)
    assert "answered by the built-in offline model" in done.stdout
