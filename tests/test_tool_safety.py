"""The attacks the tool sandbox stops: workspace escapes, host allow-list bypasses, oversized calls.

File and HTTP attacks call the tools directly (the same functions the worker runs);
the size limits, and one attack of each kind, go through a real worker and server.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import shutil
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stepflow.activities.builtin import files
from stepflow.activities.builtin.files import (
    FileTooLarge,
    PathOutsideWorkspace,
    list_files,
    open_in_workspace,
    read_file,
    resolve_in_workspace,
    write_file,
)
from stepflow.activities.builtin.http import (
    HostNotAllowed,
    HttpUnavailable,
    InvalidUrl,
    ResponseTooLarge,
)
from stepflow.activities.builtin.http import http_get as _http_get
from stepflow.activities.context import ToolError
from stepflow.activities.registry import ToolRegistrationError, tool
from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, text, tool_calls
from tests.support.tools import journal_read, journal_write

# --- tools with limits of their own -------------------------------------------------------------


@tool(max_request_bytes=200)
def safety_small_request(journal: str, text: str) -> int:
    """Count the characters of a short text (arguments of 200 bytes at most)."""
    journal_write(journal, "ran")
    return len(text)


@tool(max_output_bytes=1_000)
def safety_small_output(journal: str, size: int) -> str:
    """Return `size` characters (results of 1,000 bytes at most)."""
    journal_write(journal, "ran")
    return "x" * size


def test_limits_must_be_positive() -> None:
    bad: Any
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ToolRegistrationError, match="max_output_bytes"):
            tool(max_output_bytes=bad)


# --- the workspace ------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("STEPFLOW_WORKSPACE", str(ws))
    return ws


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace with a secret in it, which no attack may touch."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("secret")
    return out


def untouched(outside: Path) -> bool:
    return (
        sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
        and (outside / "secret.txt").read_text() == "secret"
    )


ESCAPES = [
    "../outside/secret.txt",
    "a/../../outside/secret.txt",
    "./../outside/secret.txt",
    "sub/..//../outside/secret.txt",
    "link.txt",  # a symlink to the secret
    "linkdir/secret.txt",  # through a symlinked directory
    "linkdir/../outside/secret.txt",  # `..` after a symlink goes up from its target
    "linkdir/new/planted.txt",  # creating directories through it
    "/etc/passwd",
    "{outside}/secret.txt",
]


@pytest.fixture
def planted(workspace: Path, outside: Path) -> Path:
    """The workspace with symlinks out of it, as an attacker (or a careless user) left them."""
    (workspace / "sub").mkdir()
    (workspace / "link.txt").symlink_to(outside / "secret.txt")
    (workspace / "linkdir").symlink_to(outside, target_is_directory=True)
    return workspace


@pytest.mark.parametrize("path", ESCAPES)
def test_every_file_tool_refuses_every_escape(planted: Path, outside: Path, path: str) -> None:
    path = path.format(outside=outside)
    with pytest.raises(PathOutsideWorkspace) as err:
        read_file(path)
    assert err.value.non_retryable
    for append in (False, True):
        with pytest.raises(PathOutsideWorkspace):
            write_file(path, "pwned", append=append)
    for mode in ("rb", "wb", "ab"):  # what your own tools open files with
        with pytest.raises(PathOutsideWorkspace):
            open_in_workspace(path, mode)
    assert untouched(outside)


def test_your_own_tools_open_workspace_files_the_same_way(workspace: Path) -> None:
    with open_in_workspace("data/raw.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    with open_in_workspace("data/raw.bin", "ab") as handle:
        handle.write(b"\x02")
    with open_in_workspace("data/raw.bin") as handle:
        assert handle.read() == b"\x00\x01\x02"
    with pytest.raises(ToolError, match="directory"):
        open_in_workspace("data")


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a\0b", "NUL"), ("a/" * 600 + "b", "over the limit"), ("", "empty"), ("  ", "empty")],
)
def test_odd_paths_are_refused_clearly(workspace: Path, path: str, expected: str) -> None:
    with pytest.raises(ToolError, match=expected) as err:
        resolve_in_workspace(path)
    assert err.value.non_retryable


@pytest.fixture
def swap_after_check(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """Run `swap` right after the path check passes: the race a symlink attack would win."""

    def arm(swap: Callable[[], None]) -> None:
        check = files.resolve_in_workspace

        def checked_then_swapped(path: str) -> Path:
            resolved = check(path)
            swap()
            return resolved

        monkeypatch.setattr(files, "resolve_in_workspace", checked_then_swapped)

    return arm


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_followed(
    workspace: Path, outside: Path, swap_after_check: Callable[[Callable[[], None]], None]
) -> None:
    (workspace / "dir").mkdir()
    (workspace / "dir" / "secret.txt").write_text("inside")

    def swap() -> None:
        if not (workspace / "dir").is_symlink():
            shutil.rmtree(workspace / "dir")
            (workspace / "dir").symlink_to(outside, target_is_directory=True)

    swap_after_check(swap)
    with pytest.raises(PathOutsideWorkspace):
        read_file("dir/secret.txt")
    for path in ("dir/secret.txt", "dir/planted.txt", "dir/new/planted.txt"):
        for append in (False, True):
            with pytest.raises(PathOutsideWorkspace):
                write_file(path, "pwned", append=append)
    assert untouched(outside)


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(
    workspace: Path, outside: Path, swap_after_check: Callable[[Callable[[], None]], None]
) -> None:
    target = workspace / "notes.txt"
    target.write_text("inside")

    def swap() -> None:
        target.unlink()
        target.symlink_to(outside / "secret.txt")

    swap_after_check(swap)
    with pytest.raises(PathOutsideWorkspace):
        read_file("notes.txt")
    target.unlink()
    target.write_text("inside")
    with pytest.raises(PathOutsideWorkspace):
        write_file("notes.txt", "pwned", append=True)
    target.unlink()
    target.write_text("inside")
    # A whole-file write renames over the link: the link goes, its target stays as it was.
    assert write_file("notes.txt", "replaced") == {"path": "notes.txt", "bytes": 8}
    assert not target.is_symlink() and target.read_text() == "replaced"
    assert untouched(outside)


def test_a_write_replaces_a_hard_link_instead_of_writing_through_it(
    workspace: Path, outside: Path
) -> None:
    os.link(outside / "secret.txt", workspace / "hard.txt")
    write_file("hard.txt", "replaced")
    assert (workspace / "hard.txt").read_text() == "replaced"
    assert untouched(outside)


async def test_fifos_and_devices_are_refused_without_blocking(workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")  # opening it to read would wait for a writer forever
    with pytest.raises(ToolError, match="not a regular file"):
        await asyncio.wait_for(asyncio.to_thread(read_file, "pipe"), 30)
    with pytest.raises(ToolError, match="pipe"):
        await asyncio.wait_for(asyncio.to_thread(write_file, "pipe", "x", append=True), 30)


def test_a_huge_file_is_refused_before_it_is_read(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (workspace / "huge.log").open("wb") as handle:  # 1 GiB, sparse: costs no disk
        handle.truncate(1 << 30)
    with pytest.raises(FileTooLarge, match="STEPFLOW_TOOL_MAX_OUTPUT_BYTES") as err:
        read_file("huge.log")
    assert err.value.size == 1 << 30 and err.value.limit == 16 * 1024 * 1024
    monkeypatch.setenv("STEPFLOW_TOOL_MAX_OUTPUT_BYTES", "10")
    (workspace / "small.txt").write_text("0123456789")
    assert read_file("small.txt") == "0123456789"
    (workspace / "small.txt").write_text("0123456789!")
    with pytest.raises(FileTooLarge):
        read_file("small.txt")


def test_list_files_never_walks_out_of_the_workspace(planted: Path, outside: Path) -> None:
    (outside / "deep").mkdir()
    (outside / "deep" / "other.txt").write_text("x")
    (planted / "loop").symlink_to(planted, target_is_directory=True)  # must not recurse forever
    (planted / "sub" / "a.txt").write_text("a")
    (planted / "alias.txt").symlink_to(planted / "sub" / "a.txt")  # stays inside: listed
    assert list_files() == ["alias.txt", "sub/a.txt"]
    for pattern in ("linkdir/*", "linkdir/**", "linkdir/**/*", "loop/**", "**/secret.txt"):
        assert list_files(pattern) == []
    for pattern in ("../*", "/etc/*", "sub/../../*"):
        with pytest.raises(PathOutsideWorkspace):
            list_files(pattern)


def test_list_files_patterns(workspace: Path) -> None:
    for path in ("a.md", "b.txt", "docs/c.md", "docs/deep/d.md", ".hidden.md"):
        write_file(path, "x")
    assert list_files("*.md") == [".hidden.md", "a.md"]
    assert list_files("**/*.md") == [".hidden.md", "a.md", "docs/c.md", "docs/deep/d.md"]
    assert list_files("docs/**") == ["docs/c.md", "docs/deep/d.md"]
    assert list_files("docs/*/?.md") == ["docs/deep/d.md"]
    assert list_files("[ab].*") == ["a.md", "b.txt"]


# --- HTTP -------------------------------------------------------------------------------------


@functools.cache
def bomb() -> bytes:
    """50 MB of zeros, 50 KB on the wire."""
    return gzip.compress(bytes(50_000_000), 9)


class Site(BaseHTTPRequestHandler):
    """A test web server that records every request it gets."""

    protocol_version = "HTTP/1.1"
    hits: ClassVar[list[str]]

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        path, _, query = self.path.partition("?")
        if path == "/ok":
            self._send(200, b"fine")
        elif path == "/redirect":
            self._send(302, b"", Location=query.removeprefix("to="))
        elif path == "/gzip":
            self._send(200, gzip.compress(b"hello, gzip"), Content_Encoding="gzip")
        elif path == "/bomb":
            self._send(200, bomb(), Content_Encoding="gzip")
        elif path == "/endless":
            self._stream(lambda: b"x" * 65536, pause=0)
        elif path == "/drip":
            self._stream(lambda: b"x", pause=0.2)
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, chunk: Callable[[], bytes], pause: float) -> None:
        """A body with no Content-Length that goes on until the client hangs up (or 60 s)."""
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                data = chunk()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve() -> Iterator[tuple[int, list[str]]]:
    hits: list[str] = []
    handler = type("SiteHandler", (Site,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def allowed_site(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[int, list[str]]]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setenv("STEPFLOW_HTTP_MAX_BYTES", "1000")
    monkeypatch.setenv("STEPFLOW_HTTP_TIMEOUT_SECONDS", "10")
    for port, hits in _serve():
        # Only this port of 127.0.0.1: not its other ports, not `localhost`.
        monkeypatch.setenv("STEPFLOW_HTTP_ALLOW_HOSTS", f"127.0.0.1:{port}")
        yield port, hits


@pytest.fixture
def forbidden_site() -> Iterator[tuple[int, list[str]]]:
    """Another server on 127.0.0.1, on a port the allow-list does not name."""
    yield from _serve()


async def http_get(url: str, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = await _http_get(url, **kwargs)
    return result


async def test_only_the_allowed_host_and_port_are_fetched(
    allowed_site: tuple[int, list[str]], forbidden_site: tuple[int, list[str]]
) -> None:
    port, _ = allowed_site
    other, other_hits = forbidden_site
    assert (await http_get(f"http://127.0.0.1:{port}/ok"))["text"] == "fine"
    refused = [
        f"http://127.0.0.1:{other}/ok",  # another port of the allowed address
        f"http://localhost:{port}/ok",  # another name of it
        f"http://127.0.0.1:{port}@localhost:{other}/ok",  # userinfo that looks like the host
        f"http://localhost:{other}#@127.0.0.1:{port}/ok",  # a fragment that looks like it
        f"http://2130706433:{port}/ok",  # the address as one number
        f"http://127.1:{port}/ok",  # the address, short
        f"http://0x7f000001:{port}/ok",  # the address in hex
        f"http://[::ffff:127.0.0.1]:{port}/ok",  # the address as IPv6
    ]
    for url in refused:
        with pytest.raises(HostNotAllowed) as err:
            await http_get(url)
        assert err.value.non_retryable
        assert "STEPFLOW_HTTP_ALLOW_HOSTS" in str(err.value)
    assert other_hits == []


async def test_a_redirect_to_a_host_not_allowed_is_not_followed(
    allowed_site: tuple[int, list[str]], forbidden_site: tuple[int, list[str]]
) -> None:
    port, hits = allowed_site
    other, other_hits = forbidden_site
    for target in (f"http://127.0.0.1:{other}/ok", f"http://localhost:{port}/ok"):
        with pytest.raises(HostNotAllowed):
            await http_get(f"http://127.0.0.1:{port}/redirect?to={target}")
    # Redirect chains are checked at every hop, not only the first and the last.
    hop = f"http://127.0.0.1:{port}/redirect?to=http://127.0.0.1:{other}/ok"
    with pytest.raises(HostNotAllowed, match=f"port {other}"):
        await http_get(f"http://127.0.0.1:{port}/redirect?to={hop}")
    assert other_hits == []
    assert len(hits) == 4


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1/x",
        "data:text/plain,hi",
        "javascript:alert(1)",
        "http:///nohost",
        "http://" + "a" * 9000,
    ],
)
async def test_only_http_and_https_urls(allowed_site: tuple[int, list[str]], url: str) -> None:
    with pytest.raises((InvalidUrl, HostNotAllowed)) as err:
        await http_get(url)
    assert err.value.non_retryable


async def test_allow_list_entries_must_be_hosts(
    allowed_site: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = allowed_site
    for entry, expected in [("https://127.0.0.1", "not URLs"), ("127.0.0.1:http", "no valid port")]:
        monkeypatch.setenv("STEPFLOW_HTTP_ALLOW_HOSTS", entry)
        with pytest.raises(ToolError, match=expected):
            await http_get(f"http://127.0.0.1:{port}/ok")
    monkeypatch.setenv("STEPFLOW_HTTP_ALLOW_HOSTS", "[::1]:1, 127.0.0.1")  # any port
    assert (await http_get(f"http://127.0.0.1:{port}/ok"))["status"] == 200


async def test_an_endless_body_stops_at_the_limit(allowed_site: tuple[int, list[str]]) -> None:
    port, _ = allowed_site
    with pytest.raises(ResponseTooLarge) as err:
        await http_get(f"http://127.0.0.1:{port}/endless")
    assert err.value.non_retryable and err.value.limit == 1000


async def test_a_compressed_bomb_is_inflated_only_up_to_the_limit(
    allowed_site: tuple[int, list[str]],
) -> None:
    port, _ = allowed_site
    assert (await http_get(f"http://127.0.0.1:{port}/gzip"))["text"] == "hello, gzip"
    bomb()  # made before measuring: the server runs in this process
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge):
            await http_get(f"http://127.0.0.1:{port}/bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"{peak:,} bytes at the peak, for a 50 MB bomb"


async def test_a_server_that_drips_cannot_hold_the_call_past_the_timeout(
    allowed_site: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte comes in time for the read timeout; the whole call's deadline still ends it."""
    port, _ = allowed_site
    monkeypatch.setenv("STEPFLOW_HTTP_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("STEPFLOW_HTTP_MAX_BYTES", "1000000")
    with pytest.raises(HttpUnavailable, match="timed out after 1s") as err:
        await http_get(f"http://127.0.0.1:{port}/drip")
    assert not err.value.non_retryable  # a slow server may do better on the next attempt


# --- through a real worker ----------------------------------------------------------------------


async def test_escapes_fail_the_step_at_once(
    worker: None,
    stepflow: StepflowClient,
    allowed_site: tuple[int, list[str]],
    forbidden_site: tuple[int, list[str]],
    tmp_path: Path,
) -> None:
    port, _ = allowed_site
    other, other_hits = forbidden_site
    retry = {"max_attempts": 3, "initial_interval": "100ms"}
    attacks = [
        step("write", "write_file", args={"path": "../escaped.txt", "content": "x"}, retry=retry),
        step(
            "fetch",
            "http_get",
            args={"url": f"http://127.0.0.1:{port}/redirect?to=http://127.0.0.1:{other}/ok"},
            retry=retry,
        ),
    ]
    expected = {"write": "PathOutsideWorkspace", "fetch": "HostNotAllowed"}
    for attack in attacks:
        result = await stepflow.run_pipeline(pipeline(attack))
        record = result.steps[0]
        assert result.status is PipelineStatus.FAILED
        assert (record.error_type, record.attempts) == (expected[record.id], 1)
    assert not (tmp_path / "escaped.txt").exists()
    assert other_hits == []


async def test_a_request_over_the_tools_limit_never_reaches_it(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    retry = {"max_attempts": 3, "initial_interval": "100ms"}
    small = step("small", "safety_small_request", args={"journal": journal, "text": "hi"})
    big = step(
        "big", "safety_small_request", args={"journal": journal, "text": "x" * 300}, retry=retry
    )
    assert (await stepflow.run_pipeline(pipeline(small))).step("small").output == 2
    result = await stepflow.run_pipeline(pipeline(big))
    record = result.step("big")
    assert (record.status, record.error_type, record.attempts) == (
        StepStatus.FAILED,
        "ToolRequestTooLarge",
        1,
    )
    assert record.error is not None
    assert "over its limit of 200" in record.error
    assert len(journal_read(journal)) == 1  # only the small call ran


async def test_an_output_over_the_tools_limit_fails_the_step_at_once(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    retry = {"max_attempts": 3, "initial_interval": "100ms"}
    spec = pipeline(
        step("big", "safety_small_output", args={"journal": journal, "size": 2_000}, retry=retry)
    )
    record = (await stepflow.run_pipeline(spec)).step("big")
    assert (record.error_type, record.attempts) == ("ToolOutputTooLarge", 1)
    assert record.error is not None
    assert "2,002 bytes as JSON, over its limit of 1,000" in record.error
    assert len(journal_read(journal)) == 1


async def test_the_default_limits_come_from_the_settings(
    worker: None, stepflow: StepflowClient, journal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_TOOL_MAX_OUTPUT_BYTES", "100")
    monkeypatch.setenv("STEPFLOW_TOOL_MAX_REQUEST_BYTES", "150")
    result = await stepflow.run_pipeline(
        pipeline(
            step("out", "echo", args={"value": "y" * 120}),
            step("in", "echo", args={"value": "z" * 200}),
            # A tool's own limit wins over the default: 1,000 here.
            step("own", "safety_small_output", args={"journal": journal, "size": 500}),
        )
    )
    assert result.step("out").error_type == "ToolOutputTooLarge"
    assert result.step("in").error_type == "ToolRequestTooLarge"
    assert result.step("own").output == "x" * 500


async def test_an_agent_is_told_its_tools_output_was_too_large(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        tool_calls(("safety_small_output", {"journal": journal, "size": 5_000})),
        text("asked for less"),
    )
    spec = pipeline(agent("a", tools=["safety_small_output"], tool_retry={"max_attempts": 3}))
    result = await stepflow.run_pipeline(spec)
    assert result.step("a").output == "asked for less"
    told = model_server.requests[1].messages[-1]["content"]
    assert told.startswith("Error: ToolOutputTooLarge: the result of tool 'safety_small_output'")
    assert len(journal_read(journal)) == 1
