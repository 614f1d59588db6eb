"""MCP servers' tools as Stepflow tools, against real MCP servers (stdio and Streamable HTTP).

The servers are `tests.support.mcp_servers`, written with the `mcp` package:
`local` runs as a subprocess over stdio, `remote` over HTTP on 127.0.0.1 behind
a bearer token. Every tool call is a real activity on the real Temporal server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, ImageContent, TextContent
from temporalio.api.enums.v1 import EventType

from stepflow.activities.mcp.content import error_text, tool_output
from stepflow.activities.mcp.definition import McpArguments, McpToolDefinition
from stepflow.activities.registry import model_tool_name, tool_from_model_name
from stepflow.client.api import StepflowClient
from stepflow.client.cli import main
from stepflow.runtime.mcp_config import McpConfigError, McpServerConfig, safe_url
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import PipelineStatus, StepStatus
from stepflow.workflows.validation import SpecError
from tests.support.helpers import agent, pipeline, step
from tests.support.mcp_servers import SECRET_ENV, HttpMcpServer, free_port, png_bytes
from tests.support.model_server import ScriptedModelServer, text, tool_calls

ROOT = Path(__file__).resolve().parent.parent

TOKEN = "mcp-bearer-token-8f3a9c2e71d4"
"""The HTTP server's bearer token: in the worker's environment only, as ${MCP_TEST_TOKEN}."""
ENV_SECRET = "mcp-env-secret-5d1b7e4a90c6"
"""What the stdio server gets in its environment, from ${MCP_TEST_ENV_SECRET}."""

FAST_RETRY = {"initial_interval": "100ms", "max_attempts": 3}


LOCAL_SERVER = {
    "command": sys.executable,
    "args": ["-m", "tests.support.mcp_servers"],
    "cwd": str(ROOT),
    "env": {SECRET_ENV: "${MCP_TEST_ENV_SECRET}"},
}
"""The test server over stdio: a process of the worker's, started when first needed."""


@pytest.fixture
def remote() -> Iterator[HttpMcpServer]:
    with HttpMcpServer(token=TOKEN) as server:
        yield server


@pytest.fixture
def mcp_servers(remote: HttpMcpServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    servers = {
        "local": LOCAL_SERVER,
        "remote": {"url": remote.url, "headers": {"Authorization": "Bearer ${MCP_TEST_TOKEN}"}},
    }
    monkeypatch.setenv("MCP_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("MCP_TEST_ENV_SECRET", ENV_SECRET)
    monkeypatch.setenv("STEPFLOW_MCP_SERVERS", json.dumps(servers))
    return servers


@pytest.fixture
def settings(mcp_servers: dict[str, Any], settings: Settings) -> Settings:
    """The usual test settings, with the MCP servers (set before the worker reads them)."""
    return Settings()


async def _history_json(stepflow: StepflowClient, workflow_id: str) -> str:
    history = await stepflow.temporal.get_workflow_handle(workflow_id).fetch_history()
    return history.to_json()


# --- tool steps --------------------------------------------------------------------------------


async def test_tool_steps_call_mcp_tools_over_stdio_and_http(
    worker: None, stepflow: StepflowClient
) -> None:
    spec = pipeline(
        step("hello", "local.echo", args={"text": "hello"}),
        step("json", "remote.lookup", args={"key": "abcd"}),
        step("image", "local.picture", args={"size": 16}),
        step(
            "again", "remote.echo", args={"text": "{{ steps.hello.output }}!"}, depends_on=["hello"]
        ),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("hello") == "hello"  # text
    assert result.output("json") == {"key": "abcd", "value": 4, "tags": ["a", "b"]}  # JSON
    [image] = result.output("image")  # binary, as MCP's own JSON
    assert image["type"] == "image" and image["mimeType"] == "image/png"
    assert base64.b64decode(image["data"]) == png_bytes(16)
    assert result.output("again") == "hello!"

    history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert sorted(scheduled) == sorted(
        ["tool_local.echo", "tool_remote.lookup", "tool_local.picture", "tool_remote.echo"]
    )
    timeline = [(e.subject, e.what) for e in await stepflow.history(run.workflow_id)]
    assert ("hello · tool local.echo", "completed (attempt 1)") in timeline, timeline


async def test_an_error_result_fails_the_tool_step_without_retrying(
    worker: None, stepflow: StepflowClient
) -> None:
    result = await stepflow.run_pipeline(
        pipeline(step("f", "remote.fail", args={"message": "no such file"}, retry=FAST_RETRY))
    )
    record = result.step("f")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "McpToolError"
    assert (
        record.error is not None
        and "remote.fail: Error executing tool fail: no such file" in record.error
    )
    assert record.attempts == 1


async def test_literal_arguments_are_checked_against_the_servers_schema_before_the_run(
    worker: None, stepflow: StepflowClient
) -> None:
    with pytest.raises(SpecError) as refused:
        await stepflow.start_pipeline(pipeline(step("e", "local.echo", args={"text": 5})))
    assert str(refused.value) == "step 'e': args.text: 5 is not of type 'string'"


async def test_the_idempotency_key_goes_to_a_tool_that_takes_one(
    worker: None, stepflow: StepflowClient
) -> None:
    run = await stepflow.start_pipeline(pipeline(step("w", "local.record", args={"text": "x"})))
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    output = result.output("w")
    assert output["text"] == "x"
    assert output["idempotency_key"].startswith(f"{run.workflow_id}/")
    assert output["idempotency_key"].endswith("/w")


async def test_a_large_image_goes_to_the_payload_store(
    worker: None, stepflow: StepflowClient
) -> None:
    run = await stepflow.start_pipeline(
        pipeline(step("big", "remote.picture", args={"size": 400_000}))
    )
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    [image] = result.output("big")
    assert base64.b64decode(image["data"]) == png_bytes(400_000)

    history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()
    [stored] = [
        e.activity_task_completed_event_attributes.result.payloads[0]
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ]
    assert stored.external_payloads and stored.external_payloads[0].size_bytes > 500_000
    assert len(stored.data) < 1_000


# --- failures of the server --------------------------------------------------------------------


async def test_a_stdio_server_that_dies_mid_call_is_restarted_and_the_call_retried(
    worker: None, stepflow: StepflowClient, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed"
    spec = pipeline(
        step("warm", "local.echo", args={"text": "up"}),
        step(
            "c",
            "local.crash_once",
            args={"marker": str(marker)},
            retry=FAST_RETRY,
            depends_on=["warm"],
        ),
        step("after", "local.echo", args={"text": "still here"}, depends_on=["c"]),
    )
    result = await stepflow.run_pipeline(spec)

    record = result.step("c")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.attempts == 2
    survived = record.output
    first = marker.read_text()
    assert survived.startswith("survived in process ") and survived.endswith(
        f"the first was {first}"
    )
    assert f"process {first}," not in survived  # a new server process answered
    assert result.output("after") == "still here"


async def test_a_call_that_hangs_past_its_timeout_times_out_and_is_retried(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step(
            "h",
            "local.hang",
            args={"seconds": 120, "journal": journal},
            timeout={"start_to_close": "1s"},
            retry={"initial_interval": "100ms", "max_attempts": 2},
        ),
        step("after", "local.echo", args={"text": "ok"}),  # the server answers others meanwhile
    )
    result = await stepflow.run_pipeline(spec)

    record = result.step("h")
    assert record.status is StepStatus.TIMED_OUT
    assert record.error == "start-to-close timeout"
    assert record.attempts == 2
    assert len(Path(journal).read_text().splitlines()) == 2  # each attempt reached the server
    assert result.output("after") == "ok"


async def test_a_server_gone_when_the_step_runs_fails_it_naming_the_server(
    worker: None, stepflow: StepflowClient, remote: HttpMcpServer, journal: str
) -> None:
    spec = pipeline(
        step("wait", "record", args={"journal": journal, "seconds": 1}),
        step(
            "d",
            "remote.echo",
            args={"text": "hi"},
            depends_on=["wait"],
            retry={"initial_interval": "100ms", "max_attempts": 2},
        ),
    )
    run = await stepflow.start_pipeline(spec)  # validated against the running server
    remote.__exit__(None, None, None)  # which stops before the worker first needs it
    result = await stepflow.get_result(run.workflow_id)

    record = result.step("d")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "McpServerUnavailable"
    assert record.error is not None
    assert record.error.startswith(f"MCP server 'remote' (http: {remote.url}) cannot be reached: ")
    assert record.attempts == 2


async def test_an_http_server_that_restarted_gets_a_new_session(
    worker: None, stepflow: StepflowClient, remote: HttpMcpServer
) -> None:
    first = await stepflow.run_pipeline(pipeline(step("a", "remote.echo", args={"text": "one"})))
    assert first.output("a") == "one"
    remote.__exit__(None, None, None)
    with HttpMcpServer(token=TOKEN, port=remote.port):  # the same address, no session of ours
        again = await stepflow.run_pipeline(
            pipeline(step("b", "remote.echo", args={"text": "two"}, retry=FAST_RETRY))
        )
    record = again.step("b")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.output == "two"
    assert record.attempts <= 2  # at most the attempt that found the old session gone


# --- agent steps -------------------------------------------------------------------------------


async def test_an_agent_step_calls_mcp_tools_of_both_servers(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(
        tool_calls(("local__lookup", {"key": "abc"}), ("remote__echo", {"text": "hi"})),
        text("done"),
    )
    result = await stepflow.run_pipeline(
        pipeline(agent("a", tools=["local.lookup", "remote.echo"], input="go"))
    )
    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.tool_calls == 2

    first = model_server.requests[0]
    assert first.tools == ["local__lookup", "remote__echo"]
    [lookup] = [t for t in first.body["tools"] if t["function"]["name"] == "local__lookup"]
    assert lookup["function"]["description"] == "Look a key up in a tiny table; answers JSON."
    assert lookup["function"]["parameters"]["required"] == ["key"]
    results = [m for m in model_server.requests[1].messages if m["role"] == "tool"]
    assert json.loads(results[0]["content"]) == {"key": "abc", "value": 3, "tags": ["a", "b"]}
    assert results[1]["content"] == "hi"


async def test_an_error_result_goes_back_to_the_model(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(
        tool_calls(("local__fail", {"message": "disk on fire"})),
        tool_calls(("local__echo", {"text": 7})),  # fails the schema: never runs
        text("gave up"),
    )
    result = await stepflow.run_pipeline(
        pipeline(agent("a", tools=["local.fail", "local.echo"], tool_retry=FAST_RETRY))
    )
    assert result.step("a").status is StepStatus.SUCCEEDED
    [failed] = [m for m in model_server.requests[1].messages if m["role"] == "tool"]
    assert (
        failed["content"]
        == "Error: McpToolError: local.fail: Error executing tool fail: disk on fire"
    )
    refused = [m for m in model_server.requests[2].messages if m["role"] == "tool"][-1]
    assert refused["content"].startswith("Error: the arguments of 'local.echo' do not match")
    assert "7 is not of type 'string'" in refused["content"]
    assert result.step("a").tool_calls == 1


async def test_changed_tools_are_offered_after_the_server_says_its_tools_changed(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(
        tool_calls(("local__unlock", {})),
        tool_calls(("local__secret", {"word": "now"})),
        text("found it"),
    )
    result = await stepflow.run_pipeline(
        pipeline(agent("a", tools=["local.unlock", "local.secret"]))
    )
    assert result.step("a").status is StepStatus.SUCCEEDED, result.step("a").error
    requests = model_server.requests

    def offered(index: int) -> dict[str, Any]:
        [secret] = [
            t for t in requests[index].body["tools"] if t["function"]["name"] == "local__secret"
        ]
        function: dict[str, Any] = secret["function"]
        return function

    assert offered(0)["description"] == "Locked: call unlock first."
    assert offered(0)["parameters"]["properties"] == {}
    # Listed again because the server sent notifications/tools/list_changed: the worker keeps
    # a listing until the server says it changed (or is started again).
    assert offered(1)["description"] == "The secret, for those who unlocked it."
    assert offered(1)["parameters"]["required"] == ["word"]
    results = [m["content"] for m in requests[2].messages if m["role"] == "tool"]
    assert results == ["unlocked", "the secret is 42 (now)"]


async def test_a_tool_added_by_an_http_server_is_usable(
    worker: None, stepflow: StepflowClient
) -> None:
    first = await stepflow.run_pipeline(
        pipeline(step("before", "remote.echo", args={"text": "x"}), step("u", "remote.unlock"))
    )
    assert first.status is PipelineStatus.SUCCEEDED, first.error
    # The HTTP server keeps its tools across sessions: `validate` sees `extra` now, and the
    # worker, which listed the tools before they changed, lists them again.
    second = await stepflow.run_pipeline(pipeline(step("e", "remote.extra")))
    assert second.status is PipelineStatus.SUCCEEDED, second.error
    assert second.output("e") == "extra!"


# --- secrets -----------------------------------------------------------------------------------


async def test_secrets_stay_out_of_logs_and_history(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_server.play(tool_calls(("remote__lookup", {"key": "k"})), text("ok"))
    spec = pipeline(
        step("who", "local.whoami"),
        step("http", "remote.echo", args={"text": "through the token"}),
        agent("a", tools=["remote.lookup"]),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error

    # The secrets arrived where they belong...
    digest = hashlib.sha256(ENV_SECRET.encode()).hexdigest()[:12]
    assert result.output("who") == f"secret of {len(ENV_SECRET)} characters, sha256 {digest}"
    assert result.output("http") == "through the token"
    # ...and nowhere else: not in the run's or the agent step's history, nor in the logs.
    kept = await _history_json(stepflow, run.workflow_id)
    kept += await _history_json(stepflow, f"{run.workflow_id}/a")
    assert "tool_remote.echo" in kept
    assert TOKEN not in kept and ENV_SECRET not in kept
    logged = capsys.readouterr()
    assert "mcp server connected" in logged.out + logged.err
    assert TOKEN not in logged.out + logged.err and ENV_SECRET not in logged.out + logged.err


async def test_a_wrong_token_is_refused_without_showing_it(
    worker: None, stepflow: StepflowClient, monkeypatch: pytest.MonkeyPatch, remote: HttpMcpServer
) -> None:
    wrong = "wrong-token-0123456789abcdef"
    monkeypatch.setenv("MCP_TEST_TOKEN", wrong)  # read when connecting
    with pytest.raises(SpecError) as refused:
        await stepflow.start_pipeline(pipeline(step("x", "remote.echo", args={"text": "hi"})))
    message = str(refused.value)
    assert message.startswith(f"MCP server 'remote' (http: {remote.url}) cannot be reached: ")
    assert wrong not in message
    assert remote.auth is not None and remote.auth.refused >= 1


# --- validate and tools ------------------------------------------------------------------------


def test_validate_names_a_server_it_cannot_reach_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    monkeypatch.setenv("STEPFLOW_MCP_SERVERS", json.dumps({"search": {"url": url}}))
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nsteps:\n"
        "  - {id: s, kind: tool, tool: search.web, args: {q: x}}\n"
        "  - {id: a, kind: agent, instructions: hi, tools: [search.web, search.news]}\n"
    )
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: MCP server 'search' (http: {url}) cannot be reached: ")


def test_validate_checks_tools_and_arguments_against_the_servers(
    mcp_servers: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nsteps:\n"
        "  - {id: ok, kind: tool, tool: remote.echo, args: {text: '{{ inputs.t }}'}}\n"
        "  - {id: bad, kind: tool, tool: local.echo, args: {text: 5}}\n"
        "  - {id: typo, kind: tool, tool: remote.ecco}\n"
        "  - {id: nowhere, kind: tool, tool: files.read}\n"
        "  - {id: a, kind: agent, instructions: hi, tools: [local.lookup, local.lokup]}\n"
        "inputs: {t: {type: string}}\n"
    )
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"{path}: step 'bad': args.text: 5 is not of type 'string'",
        f"{path}: step 'typo': tool: unknown tool 'remote.ecco' (did you mean 'remote.echo'?); "
        "`stepflow tools` lists them, STEPFLOW_TOOL_MODULES adds yours",
        f"{path}: step 'nowhere': tool: unknown tool 'files.read' (no MCP server 'files' is "
        "configured: STEPFLOW_MCP_SERVERS); `stepflow tools` lists them, STEPFLOW_TOOL_MODULES "
        "adds yours",
        f"{path}: step 'a': tools[1]: unknown tool 'local.lokup' (did you mean 'local.lookup'?)",
    ]


def test_stepflow_tools_lists_the_servers_tools_with_their_schemas(
    mcp_servers: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tools", "--json"]) == 0
    out = capsys.readouterr().out
    listed = {t["name"]: t for t in json.loads(out[out.index("[\n") :])}  # after any log lines
    assert {"echo", "local.echo", "remote.echo", "local.lookup", "remote.picture"} <= set(listed)
    assert listed["remote.lookup"]["description"] == "Look a key up in a tiny table; answers JSON."
    record = listed["local.record"]["parameters"]
    assert set(record["properties"]) == {"text"}  # the idempotency key is Stepflow's to fill in


def test_stepflow_tools_names_a_server_it_cannot_reach(
    mcp_servers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    servers = {**mcp_servers, "down": {"url": url}}
    monkeypatch.setenv("STEPFLOW_MCP_SERVERS", json.dumps(servers))
    assert main(["tools"]) == 2
    captured = capsys.readouterr()
    assert "local.echo" in captured.out  # what could be read is listed
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"stepflow: MCP server 'down' (http: {url}) cannot be reached: ")


# --- the pieces, without a server --------------------------------------------------------------


def test_a_server_is_either_stdio_or_http() -> None:
    with pytest.raises(ValueError, match="either `command`"):
        McpServerConfig.model_validate({"command": "x", "url": "http://h"})
    with pytest.raises(ValueError, match="`headers` are for HTTP servers"):
        McpServerConfig.model_validate({"command": "x", "headers": {"a": "b"}})
    with pytest.raises(ValueError, match=r"server name 'a\.b'"):
        Settings(mcp_servers={"a.b": {"command": "x"}})


def test_variables_are_read_when_connecting_and_named_when_missing() -> None:
    config = McpServerConfig.model_validate(
        {"url": "https://mcp.example/mcp?key=${K}", "headers": {"Authorization": "Bearer ${T}"}}
    )
    resolved = config.resolve("search", {"T": "tok-123456", "K": "k-abcdef"})
    assert resolved.headers == {"Authorization": "Bearer tok-123456"}
    assert resolved.url == "https://mcp.example/mcp?key=k-abcdef"
    assert "tok-123456" not in repr(resolved) and "tok-123456" not in repr(config)
    assert resolved.redact("failed with Bearer tok-123456 at k-abcdef") == "failed with *** at ***"
    assert config.describe() == "http: https://mcp.example/mcp"
    assert safe_url("https://user:pw@h:8443/p?token=x#y") == "https://h:8443/p"
    with pytest.raises(McpConfigError) as missing:
        config.resolve("search", {"K": "k"})
    assert str(missing.value) == (
        "MCP server 'search': headers.Authorization uses ${T}, which is not set in this "
        "process's environment"
    )


def test_model_names_have_no_dots_and_map_back() -> None:
    assert model_tool_name("files.read") == "files__read"
    assert model_tool_name("word_count") == "word_count"
    assert tool_from_model_name("files__read", ["word_count", "files.read"]) == "files.read"
    assert tool_from_model_name("word_count", ["word_count"]) == "word_count"
    assert tool_from_model_name("nope", ["files.read"]) == "nope"


def test_results_become_text_json_or_blocks() -> None:
    wrapped = {"properties": {"result": {"type": "string"}}, "required": ["result"]}
    assert (
        tool_output(
            CallToolResult(content=[TextContent(text="hi")], structured_content={"result": "hi"}),
            wrapped,
        )
        == "hi"
    )
    assert tool_output(
        CallToolResult(content=[], structured_content={"result": 1, "n": 2}), None
    ) == {"result": 1, "n": 2}
    assert tool_output(CallToolResult(content=[TextContent(text="plain")]), None) == "plain"
    assert tool_output(CallToolResult(content=[]), None) is None
    blocks = tool_output(
        CallToolResult(
            content=[TextContent(text="a"), ImageContent(data="AAA=", mime_type="image/png")]
        ),
        None,
    )
    assert blocks == [
        {"type": "text", "text": "a"},
        {"type": "image", "data": "AAA=", "mimeType": "image/png"},
    ]
    assert error_text(CallToolResult(content=[TextContent(text="bad")], is_error=True)) == "bad"
    assert (
        error_text(CallToolResult(content=[], is_error=True))
        == "the tool reported an error (no content)"
    )


def test_the_idempotency_parameter_is_hidden_and_arguments_checked_by_json_schema() -> None:
    async def never(**_: Any) -> None:
        raise AssertionError

    defn = McpToolDefinition(
        name="s.write",
        description="",
        fn=never,
        args_model=McpArguments,
        is_async=True,
        server="s",
        tool="write",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string"}, "idempotency_key": {"type": "string"}},
            "required": ["text", "idempotency_key"],
            "additionalProperties": False,
        },
        idempotency_param="idempotency_key",
    )
    assert defn.json_schema()["required"] == ["text"]
    assert "idempotency_key" not in defn.json_schema()["properties"]
    assert defn.validate_args({"text": "x"}) == {"text": "x"}
    assert defn.check_static_args({"text": "{{ inputs.t }}"}) == []
    assert defn.check_static_args({}) == [("args", "'text' is a required property")]
    assert defn.check_static_args({"text": 1, "x": 2}) == [
        ("args", "Additional properties are not allowed ('x' was unexpected)"),
        ("text", "1 is not of type 'string'"),
    ]


def test_servers_come_from_the_project_file_with_cwd_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stepflow.toml").write_text(
        "[mcp_servers.files]\n"
        'command = "npx"\n'
        'args = ["-y", "some-server"]\n'
        'env = { ROOT = "/data" }\n'
        'cwd = "servers"\n'
        "[mcp_servers.search]\n"
        'url = "https://mcp.example/mcp"\n'
        'headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }\n'
    )
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.delenv("STEPFLOW_MCP_SERVERS", raising=False)
    servers = Settings().mcp_servers
    assert servers["files"].cwd == str(tmp_path / "servers")
    assert servers["files"].env == {"ROOT": "/data"}
    assert servers["search"].headers == {"Authorization": "Bearer ${SEARCH_TOKEN}"}
    monkeypatch.setenv("STEPFLOW_MCP_SERVERS", '{"only": {"url": "http://127.0.0.1:1/mcp"}}')
    assert list(Settings().mcp_servers) == ["only"]  # the variable overrides the file
