"""The built-in tools, called directly as plain functions."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stepflow.activities.builtin.files import (
    FileNotFoundInWorkspace,
    PathOutsideWorkspace,
    list_files,
    read_file,
    resolve_in_workspace,
    write_file,
)
from stepflow.activities.builtin.http import (
    HostNotAllowed,
    HttpClientError,
    HttpServerError,
    HttpUnavailable,
    InvalidUrl,
    ResponseTooLarge,
    TooManyRedirects,
    http_get,
)
from stepflow.activities.builtin.transforms import (
    InvalidJson,
    InvalidTemplate,
    JsonPathNotFound,
    MissingTemplateValue,
    echo,
    json_dump,
    json_parse,
    json_select,
    text_join,
    text_split,
    text_template,
    word_count,
)
from stepflow.activities.context import ToolError
from stepflow.activities.registry import get_tool, load_tool_modules

BUILTIN_TOOLS = [
    "read_file",
    "write_file",
    "list_files",
    "echo",
    "json_parse",
    "json_dump",
    "json_select",
    "text_template",
    "text_split",
    "text_join",
    "word_count",
    "http_get",
]


# --- registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_TOOLS)
def test_builtin_tool_is_registered_with_description_and_schema(name: str) -> None:
    load_tool_modules()
    definition = get_tool(name)
    assert definition is not None, name
    assert definition.description
    assert not definition.description.startswith("Args:")
    schema = definition.json_schema()
    assert schema["type"] == "object"
    assert schema.get("additionalProperties") is False


def test_http_get_is_registered_as_async() -> None:
    definition = get_tool("http_get")
    assert definition is not None
    assert definition.is_async


def test_registered_schemas_validate_arguments() -> None:
    write = get_tool("write_file")
    assert write is not None
    assert write.validate_args({"path": "a.txt", "content": "x"}) == {
        "path": "a.txt",
        "content": "x",
        "append": False,
    }
    split = get_tool("text_split")
    assert split is not None
    assert split.validate_args({"text": "a b"}) == {
        "text": "a b",
        "separator": None,
        "max_parts": None,
    }


# --- files ------------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("STEPFLOW_WORKSPACE", str(ws))
    return ws


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, with a secret in it."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("secret")
    return out


def test_write_read_list_round_trip(workspace: Path) -> None:
    assert not workspace.exists()
    assert list_files() == []
    assert write_file("notes/a.txt", "héllo\n") == {"path": "notes/a.txt", "bytes": 7}
    assert workspace.is_dir()
    assert read_file("notes/a.txt") == "héllo\n"
    assert write_file("b.md", "# b") == {"path": "b.md", "bytes": 3}
    assert write_file("notes/deep/c.md", "c")["path"] == "notes/deep/c.md"
    assert list_files() == ["b.md", "notes/a.txt", "notes/deep/c.md"]
    assert list_files("**/*.md") == ["b.md", "notes/deep/c.md"]
    assert list_files("*.md") == ["b.md"]
    assert list_files("notes/*") == ["notes/a.txt"]


def test_write_replaces_and_appends(workspace: Path) -> None:
    write_file("log.txt", "one\n")
    write_file("log.txt", "two\n")
    assert read_file("log.txt") == "two\n"
    assert write_file("log.txt", "three\n", append=True) == {"path": "log.txt", "bytes": 6}
    assert read_file("log.txt") == "two\nthree\n"
    assert write_file("new/appended.txt", "x", append=True)["bytes"] == 1
    assert read_file("new/appended.txt") == "x"


def test_atomic_write_leaves_no_temp_file(workspace: Path) -> None:
    write_file("dir/a.txt", "first")
    write_file("dir/a.txt", "second")
    assert sorted(p.name for p in (workspace / "dir").iterdir()) == ["a.txt"]
    assert sorted(p.name for p in workspace.iterdir()) == ["dir"]


def test_atomic_write_keeps_the_file_mode(workspace: Path) -> None:
    write_file("script.sh", "#!/bin/sh\n")
    assert (workspace / "script.sh").stat().st_mode & 0o777 == 0o644
    os.chmod(workspace / "script.sh", 0o750)
    write_file("script.sh", "#!/bin/sh\necho hi\n")
    assert (workspace / "script.sh").stat().st_mode & 0o777 == 0o750


def test_read_missing_file_is_not_retryable(workspace: Path) -> None:
    workspace.mkdir()
    with pytest.raises(FileNotFoundInWorkspace) as err:
        read_file("nope.txt")
    assert err.value.non_retryable
    assert "nope.txt" in str(err.value)
    assert str(workspace.resolve()) in str(err.value)
    assert isinstance(err.value, ToolError)


def test_read_directory_and_binary_files_are_refused(workspace: Path) -> None:
    (workspace / "sub").mkdir(parents=True)
    (workspace / "blob.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ToolError, match="directory") as err:
        read_file("sub")
    assert err.value.non_retryable
    with pytest.raises(ToolError, match="UTF-8") as err:
        read_file("blob.bin")
    assert err.value.non_retryable
    with pytest.raises(ToolError, match="directory"):
        write_file("sub", "x")


def test_resolve_in_workspace_accepts_paths_inside(workspace: Path) -> None:
    root = workspace.resolve()
    assert resolve_in_workspace("a.txt") == root / "a.txt"
    assert resolve_in_workspace("x/../a.txt") == root / "a.txt"
    assert resolve_in_workspace("new/dir/file.txt") == root / "new/dir/file.txt"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "..", "/etc/passwd"])
def test_resolve_in_workspace_refuses_escapes(workspace: Path, path: str) -> None:
    with pytest.raises(PathOutsideWorkspace) as err:
        resolve_in_workspace(path)
    assert err.value.non_retryable
    assert path in str(err.value)
    assert str(workspace.resolve()) in str(err.value)


def test_resolve_in_workspace_refuses_empty_path(workspace: Path) -> None:
    with pytest.raises(ToolError, match="empty") as err:
        resolve_in_workspace("")
    assert err.value.non_retryable


def test_escapes_are_refused_by_every_file_tool(workspace: Path, outside: Path) -> None:
    absolute = str(outside / "secret.txt")
    for path in ["../outside/secret.txt", absolute]:
        with pytest.raises(PathOutsideWorkspace):
            read_file(path)
        with pytest.raises(PathOutsideWorkspace):
            write_file(path, "overwritten")
        with pytest.raises(PathOutsideWorkspace):
            write_file(path, "appended", append=True)
    for pattern in ["../*", "../outside/*", str(outside / "*")]:
        with pytest.raises(PathOutsideWorkspace):
            list_files(pattern)
    assert (outside / "secret.txt").read_text() == "secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_symlinked_file_pointing_outside_is_refused(workspace: Path, outside: Path) -> None:
    workspace.mkdir()
    (workspace / "link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(PathOutsideWorkspace):
        resolve_in_workspace("link.txt")
    with pytest.raises(PathOutsideWorkspace):
        read_file("link.txt")
    with pytest.raises(PathOutsideWorkspace):
        write_file("link.txt", "overwritten")
    with pytest.raises(PathOutsideWorkspace):
        write_file("link.txt", "appended", append=True)
    assert (outside / "secret.txt").read_text() == "secret"
    assert (workspace / "link.txt").is_symlink()
    assert list_files() == []


def test_dangling_symlink_pointing_outside_is_refused_for_write(
    workspace: Path, outside: Path
) -> None:
    workspace.mkdir()
    (workspace / "new.txt").symlink_to(outside / "created.txt")
    with pytest.raises(PathOutsideWorkspace):
        write_file("new.txt", "x")
    with pytest.raises(PathOutsideWorkspace):
        write_file("new.txt", "x", append=True)
    assert not (outside / "created.txt").exists()


def test_symlinked_directory_pointing_outside_is_refused(workspace: Path, outside: Path) -> None:
    workspace.mkdir()
    (workspace / "linkdir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathOutsideWorkspace):
        read_file("linkdir/secret.txt")
    with pytest.raises(PathOutsideWorkspace):
        write_file("linkdir/planted.txt", "x")
    with pytest.raises(PathOutsideWorkspace):
        write_file("linkdir/sub/planted.txt", "x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert list_files() == []
    assert list_files("linkdir/*") == []


def test_symlinks_that_stay_inside_are_allowed(workspace: Path) -> None:
    write_file("real/a.txt", "a")
    (workspace / "alias").symlink_to(workspace / "real", target_is_directory=True)
    assert read_file("alias/a.txt") == "a"
    assert write_file("alias/b.txt", "b") == {"path": "real/b.txt", "bytes": 1}
    assert read_file("real/b.txt") == "b"


def test_workspace_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPFLOW_WORKSPACE", str(tmp_path / "one"))
    write_file("a.txt", "1")
    monkeypatch.setenv("STEPFLOW_WORKSPACE", str(tmp_path / "two"))
    assert list_files() == []
    with pytest.raises(FileNotFoundInWorkspace):
        read_file("a.txt")
    assert (tmp_path / "one" / "a.txt").read_text() == "1"


# --- transforms -------------------------------------------------------------------------------


def test_echo_returns_its_input() -> None:
    value = {"a": [1, 2, {"b": None}]}
    assert echo(value) is value
    assert echo() is None
    assert echo("x") == "x"


def test_json_parse_and_dump() -> None:
    assert json_parse('{"a": [1, 2.5, "é", null, true]}') == {"a": [1, 2.5, "é", None, True]}
    assert json_parse("3") == 3
    assert json_dump({"a": [1, "é"]}) == '{\n  "a": [\n    1,\n    "é"\n  ]\n}'
    assert json_dump({"a": 1}, indent=None) == '{"a": 1}'
    assert json_parse(json_dump({"x": {"y": [1]}})) == {"x": {"y": [1]}}


def test_json_parse_error_says_where() -> None:
    with pytest.raises(InvalidJson) as err:
        json_parse('{\n  "a": 1,\n  "b": }')
    assert err.value.non_retryable
    assert (err.value.line, err.value.column) == (3, 8)
    assert "line 3, column 8" in str(err.value)
    with pytest.raises(InvalidJson, match="NaN"):
        json_parse("[NaN]")
    with pytest.raises(InvalidJson):
        json_parse("")


def test_json_dump_error_is_not_retryable() -> None:
    with pytest.raises(ToolError) as err:
        json_dump({"a": {1, 2}})
    assert err.value.non_retryable
    with pytest.raises(ToolError):
        json_dump(float("nan"))


def test_json_select() -> None:
    value = {"items": [{"name": "a", "tags": ["x", "y"]}, {"name": "b"}], "0": "zero"}
    assert json_select(value, "items.0.name") == "a"
    assert json_select(value, "items.-1.name") == "b"
    assert json_select(value, "items.0.tags.1") == "y"
    assert json_select(value, "0") == "zero"
    assert json_select(value, "") is value


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("items.0.nam", "no key 'nam' at items.0"),
        ("missing", "no key 'missing' at the top level"),
        ("items.5", "no index 5 at items (the list has 2 items)"),
        ("items.first", "items is a list, so 'first' must be an index"),
        ("items.0.name.x", "which is a str"),
    ],
)
def test_json_select_missing_says_what(path: str, expected: str) -> None:
    value = {"items": [{"name": "a", "tags": []}, {"name": "b"}]}
    with pytest.raises(JsonPathNotFound) as err:
        json_select(value, path)
    assert err.value.non_retryable
    assert expected in str(err.value)


def test_text_template() -> None:
    assert text_template("Hello {name}!", {"name": "Ada"}) == "Hello Ada!"
    assert text_template("{n:>4}|{user[email]}", {"n": 7, "user": {"email": "e@x"}}) == "   7|e@x"
    assert text_template("{{literal}} {a}", {"a": 1}) == "{literal} 1"


def test_text_template_errors() -> None:
    with pytest.raises(MissingTemplateValue) as err:
        text_template("{greeting}, {name}", {"greeting": "hi"})
    assert err.value.non_retryable
    assert "{name}" in str(err.value)
    assert "'greeting'" in str(err.value)
    with pytest.raises(MissingTemplateValue, match="'email'"):
        text_template("{user[email]}", {"user": {}})
    with pytest.raises(InvalidTemplate, match="positional"):
        text_template("{}", {})
    with pytest.raises(InvalidTemplate):
        text_template("a } b", {})
    with pytest.raises(InvalidTemplate, match="private"):
        text_template("{a.__class__}", {"a": 1})


def test_text_split_join_and_count() -> None:
    assert text_split("a  b\nc") == ["a", "b", "c"]
    assert text_split("a,b,,c", ",") == ["a", "b", "", "c"]
    assert text_split("a,b,c", ",", max_parts=2) == ["a", "b,c"]
    assert text_split("a b c", max_parts=1) == ["a b c"]
    assert text_join(["a", "b"]) == "a\nb"
    assert text_join(["a", "b"], ", ") == "a, b"
    assert text_join([]) == ""
    assert word_count("one two\nthree\t four ") == 4
    assert word_count("") == 0


def test_text_split_bad_arguments() -> None:
    with pytest.raises(ToolError, match="separator") as err:
        text_split("abc", "")
    assert err.value.non_retryable
    with pytest.raises(ToolError, match="max_parts"):
        text_split("abc", max_parts=0)


# --- http -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    requested: list[str] = []

    def do_GET(self) -> None:
        self.requested.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ChunkedHandler(_Handler):
    """Sends the body without a Content-Length, so only the streaming limit can stop it."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for _ in range(10):
            chunk = b"x" * 1000
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setenv("STEPFLOW_HTTP_ALLOW_HOSTS", "127.0.0.1")
    monkeypatch.setenv("STEPFLOW_HTTP_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("STEPFLOW_HTTP_MAX_BYTES", "1000")


@pytest.fixture
def port(http_env: None) -> Iterator[str]:
    """The port of a local server, reachable as 127.0.0.1 (allowed) and localhost (not)."""
    _Handler.routes = {}
    _Handler.requested = []
    yield from _serve(_Handler)


@pytest.fixture
def chunked_port(http_env: None) -> Iterator[str]:
    yield from _serve(_ChunkedHandler)


def _route(path: str, status: int, body: bytes = b"", **headers: str) -> None:
    _Handler.routes[path] = (status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


async def test_http_get_allowed_host(port: str) -> None:
    _route("/hello", 200, "héllo".encode(), Content_Type="text/plain; charset=utf-8")
    result = await http_get(f"http://127.0.0.1:{port}/hello")
    assert result == {
        "url": f"http://127.0.0.1:{port}/hello",
        "status": 200,
        "content_type": "text/plain; charset=utf-8",
        "text": "héllo",
    }


async def test_http_get_host_match_ignores_case_and_port(
    port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_HTTP_ALLOW_HOSTS", "example.invalid, LocalHost")
    _route("/x", 200, b"ok")
    result = await http_get(f"http://LOCALHOST:{port}/x")
    assert result["status"] == 200
    assert result["text"] == "ok"


async def test_http_get_disallowed_host_is_refused(port: str) -> None:
    _route("/x", 200, b"ok")
    with pytest.raises(HostNotAllowed) as err:
        await http_get(f"http://localhost:{port}/x")
    assert err.value.non_retryable
    assert _Handler.requested == []
    assert "'localhost'" in str(err.value)
    assert "STEPFLOW_HTTP_ALLOW_HOSTS" in str(err.value)


async def test_http_get_empty_allow_list_refuses_everything(
    port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_HTTP_ALLOW_HOSTS", "")
    with pytest.raises(HostNotAllowed):
        await http_get(f"http://127.0.0.1:{port}/x")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "http:///nohost"])
async def test_http_get_refuses_other_schemes_and_hostless_urls(http_env: None, url: str) -> None:
    with pytest.raises(InvalidUrl) as err:
        await http_get(url)
    assert err.value.non_retryable


async def test_http_get_follows_redirects_on_allowed_hosts(port: str) -> None:
    _route("/start", 302, Location="/middle")
    _route("/middle", 301, Location=f"http://127.0.0.1:{port}/end")
    _route("/end", 200, b"arrived")
    result = await http_get(f"http://127.0.0.1:{port}/start")
    assert result["url"] == f"http://127.0.0.1:{port}/end"
    assert result["text"] == "arrived"


async def test_http_get_redirect_to_disallowed_host_is_refused(port: str) -> None:
    _route("/start", 302, Location=f"http://localhost:{port}/end")
    _route("/end", 200, b"should not be fetched")
    with pytest.raises(HostNotAllowed, match="'localhost'") as err:
        await http_get(f"http://127.0.0.1:{port}/start")
    assert err.value.non_retryable
    assert _Handler.requested == ["/start"]


async def test_http_get_stops_after_too_many_redirects(port: str) -> None:
    _route("/loop", 302, Location="/loop")
    with pytest.raises(TooManyRedirects) as err:
        await http_get(f"http://127.0.0.1:{port}/loop")
    assert err.value.non_retryable
    assert len(_Handler.requested) == 6  # the first request and 5 redirects


async def test_http_get_body_over_the_limit_is_refused(port: str) -> None:
    _route("/big", 200, b"x" * 1001)
    _route("/fits", 200, b"x" * 1000)
    assert len((await http_get(f"http://127.0.0.1:{port}/fits"))["text"]) == 1000
    with pytest.raises(ResponseTooLarge) as err:
        await http_get(f"http://127.0.0.1:{port}/big")
    assert err.value.non_retryable
    with pytest.raises(ResponseTooLarge):
        await http_get(f"http://127.0.0.1:{port}/fits", max_bytes=999)
    # max_bytes cannot raise the limit above STEPFLOW_HTTP_MAX_BYTES
    with pytest.raises(ResponseTooLarge):
        await http_get(f"http://127.0.0.1:{port}/big", max_bytes=10_000)


async def test_http_get_streaming_body_over_the_limit_is_refused(
    chunked_port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ResponseTooLarge):
        await http_get(f"http://127.0.0.1:{chunked_port}/stream")
    monkeypatch.setenv("STEPFLOW_HTTP_MAX_BYTES", "10000")
    result = await http_get(f"http://127.0.0.1:{chunked_port}/stream")
    assert result["text"] == "x" * 10000


async def test_http_get_404_is_not_retryable(port: str) -> None:
    with pytest.raises(HttpClientError) as err:
        await http_get(f"http://127.0.0.1:{port}/missing")
    assert err.value.non_retryable
    assert err.value.status == 404
    assert "404" in str(err.value)


@pytest.mark.parametrize("status", [503, 500, 429, 408])
async def test_http_get_server_errors_are_retryable(port: str, status: int) -> None:
    _route("/flaky", status, b"try later")
    with pytest.raises(HttpServerError) as err:
        await http_get(f"http://127.0.0.1:{port}/flaky")
    assert not err.value.non_retryable
    assert err.value.status == status


async def test_http_get_connection_refused_is_retryable(http_env: None) -> None:
    # A port that was just free: bind, read the port, close.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    free_port = server.server_address[1]
    server.server_close()
    with pytest.raises(HttpUnavailable) as err:
        await http_get(f"http://127.0.0.1:{free_port}/x")
    assert not err.value.non_retryable


async def test_http_get_bad_max_bytes(port: str) -> None:
    with pytest.raises(ToolError, match="max_bytes") as err:
        await http_get(f"http://127.0.0.1:{port}/x", max_bytes=0)
    assert err.value.non_retryable
