"""The Temporal Web UI reads like a log: a finished run's pages, opened in headless Chromium.

A dev server with its Web UI on free ports (the session's `temporal_env` has
none), a small pipeline run to completion by an in-process worker (two tool
steps and an agent step answered by the offline model), then Debian's
chromium opens the run's pages and the test reads their text, frames
included, once the single-page app has rendered what it expects.

`make test` installs chromium first (tests/setup/install_chromium.sh); where it
could not, this test is skipped with the reason that script recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.devserver import EPHEMERAL_STARTUP_TIMEOUT, temporal_binary, tuned_flags
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from tests.support.helpers import agent, pipeline, step
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = "tests/setup/install_chromium.sh"
SETUP_STATUS = ROOT / ".stepflow" / "test-setup" / "chromium.status"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No connections of its own: this machine's network is closed.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

PAGE_TEXT = """(() => {
  // The page's text and that of its same-origin frames: the Web UI renders
  // markdown (summaries, current details) in iframes.
  const texts = [document.body ? document.body.innerText : ""];
  for (const frame of document.querySelectorAll("iframe")) {
    try { texts.push(frame.contentDocument.body.innerText); } catch (e) {}
  }
  return texts.join("\\n");
})()"""


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`).

    Chromium reads commands from its fd 3 and writes replies to its fd 4, each
    a JSON message ended by a NUL byte. No driver, no websocket, no download.
    """

    def __init__(self, executable: str, profile: str) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # Out of the way of fds 3 and 4, which the shell sets up for chromium.
        theirs = [
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_read, replies_write)
        ]
        os.close(commands_read)
        os.close(replies_write)
        self._process = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$@" 3<&{theirs[0]} 4>&{theirs[1]} {theirs[0]}<&- {theirs[1]}>&-',
                "chromium",
                executable,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=theirs,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for fd in theirs:
            os.close(fd)
        self._buffer = b""
        self._last_id = 0
        self._session: str | None = None  # commands go to the browser until a page is attached
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        except BaseException:
            self.close()
            raise
        self._session = attached["sessionId"]

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 20) -> Any:
        """One protocol command (to the page, once attached); its result."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if self._session:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._last_id:  # events and other replies are ignored
                    if "error" in reply:
                        raise AssertionError(f"chromium: {method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"chromium did not answer {method} within {timeout} s")
            ready, _, _ = select.select([self._replies], [], [], left)
            if ready:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise AssertionError(f"chromium exited:\n{self._stderr()}")
                self._buffer += chunk

    def text_of(self, url: str, *expected: str, timeout: float = 20) -> str:
        """Open `url`; its text (whitespace collapsed) once it shows every `expected` string.

        The app fetches and renders after the page has loaded, so this polls;
        at the deadline it returns what is there and the caller's asserts say
        what is missing.
        """
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while True:
            found = self.send("Runtime.evaluate", {"expression": PAGE_TEXT, "returnByValue": True})
            text = re.sub(r"\s+", " ", str(found["result"].get("value", "")))
            if all(e in text for e in expected) or time.monotonic() > deadline:
                return text
            time.sleep(0.1)

    def _stderr(self) -> str:
        self._process.kill()
        _, err = self._process.communicate()
        return err.decode(errors="replace")[-2000:]

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self._session = None
            self.send("Browser.close", timeout=5)
        try:
            self._process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
        os.close(self._commands)
        os.close(self._replies)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless chromium, or skip saying why there is none."""
    with tempfile.TemporaryDirectory(prefix="stepflow-chromium-") as profile:
        browser = Browser(find_chromium(), profile)
        try:
            yield browser
        finally:
            browser.close()


def find_chromium() -> str:
    """The browser's executable, or skip saying why there is none."""
    configured = os.environ.get("STEPFLOW_CHROMIUM")
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        pytest.skip(f"STEPFLOW_CHROMIUM={configured} is not an executable file")
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    if SETUP_STATUS.exists():
        why = SETUP_STATUS.read_text().strip()
    else:
        why = f"{SETUP_SCRIPT} has not run (`make test` runs it before pytest)"
    pytest.skip(f"no chromium for the Web UI test: {why}")


@pytest.fixture
async def ui_env() -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """A dev server of our own with the Web UI; yields it and the UI's base URL."""
    ui_port = free_port()
    env = await WorkflowEnvironment.start_local(
        port=free_port(),
        ui=True,
        ui_port=ui_port,
        dev_server_existing_path=temporal_binary(),
        dev_server_startup_timeout=EPHEMERAL_STARTUP_TIMEOUT,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=[*tuned_flags(), "--ui-disable-news-fetch"],
    )
    try:
        yield env, f"http://127.0.0.1:{ui_port}"
    finally:
        await env.shutdown()


SPEC = pipeline(
    step("fetch", "echo", args={"value": "some notes"}),
    step("shape", "echo", args={"value": "shaped: {{ steps.fetch.output }}"}, depends_on=["fetch"]),
    agent("writer", "Write one line about the notes.", depends_on=["shape"], max_model_calls=4),
    name="ui-demo",
    description="The Web UI test's pipeline",
)


async def test_a_finished_run_reads_like_a_log_in_the_web_ui(
    browser: Browser, ui_env: tuple[WorkflowEnvironment, str], settings: Settings
) -> None:
    env, ui_base = ui_env
    stepflow = StepflowClient(env.client, settings=settings)
    tools = load_tool_modules(settings.tool_modules)
    # The worker stays up while the pages load: the UI asks the run for its
    # current details with a query, which a worker answers, closed runs too.
    async with build_worker(env.client, settings, tools=tools):
        run = await stepflow.start_pipeline(SPEC, workflow_id="ui-demo-run")
        result = await stepflow.get_result(run.workflow_id, run.run_id)
        assert result.status == "SUCCEEDED", result
        child = await env.client.get_workflow_handle("ui-demo-run/writer").describe()
        workflows = f"{ui_base}/namespaces/default/workflows"

        async def text_of(url: str, *expected: str) -> str:
            # Blocking protocol I/O off the event loop, where the worker runs.
            return await asyncio.to_thread(browser.text_of, url, *expected)

        # The pipeline's event history: every activity says which step it is
        # and what it does; the agent step's child workflow and the run say so too.
        history = await text_of(
            f"{workflows}/ui-demo-run/{run.run_id}/history", "Summary agent step writer"
        )
        assert "Workflow Type stepflow_pipeline" in history
        expected = {
            "pipeline ui-demo",
            "fetch · tool echo",
            "shape · tool echo",
            "agent step writer",
        }
        assert expected <= summaries(history), f"the page shows {sorted(summaries(history))}"

        # The agent step's own history (its workflow id holds a slash): its model call.
        child_url = f"{workflows}/{quote('ui-demo-run/writer', safe='')}/{child.run_id}/history"
        agent_history = await text_of(child_url, "· model call")
        assert "Workflow Type stepflow_agent_step" in agent_history
        found = summaries(agent_history)
        assert "writer · model call 1/4" in found, f"the page shows {sorted(found)}"

        # "User Metadata": the run's summary and its current details, a table of
        # steps (markdown, rendered in frames; the UI gets them with a query).
        metadata = await text_of(
            f"{workflows}/ui-demo-run/{run.run_id}/user-metadata", "writer SUCCEEDED"
        )
        current = metadata[metadata.find("Current Details") :]
        assert "pipeline ui-demo" in current  # the summary's frame
        assert "ui-demo · SUCCEEDED step status attempts time" in current, current
        for step_id in ("fetch", "shape", "writer"):
            assert f"{step_id} SUCCEEDED 1 " in current, current

        # Search attributes and memo, kept by the workflow.
        attributes = await text_of(
            f"{workflows}/ui-demo-run/{run.run_id}/search-attributes", "StepflowStatus"
        )
        assert '"StepflowPipeline": "ui-demo"' in attributes
        assert '"StepflowStatus": "SUCCEEDED"' in attributes
        memo = await text_of(f"{workflows}/ui-demo-run/{run.run_id}/memo", '"pipeline"')
        assert '"pipeline": "ui-demo"' in memo
        assert '"description": "The Web UI test\'s pipeline"' in memo


def summaries(page: str) -> set[str]:
    """The `Summary ...` texts of the history's events, as the page shows them."""
    found = re.findall(
        r"Summary ((?:pipeline|agent step) \S+|\S+ · (?:tool \S+|model call [\d/]+))", page
    )
    return set(found)
