"""Hardening of the built-in tools and of tool loading.

- `text_template` refuses format specs that would allocate without bound.
- `http_get` errors never carry a URL's credentials or token-like query values.
- Tool modules are imported from the current directory only when STEPFLOW_IMPORT_PATH says so.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepflow.activities import registry
from stepflow.activities.builtin.transforms import (
    MAX_FORMAT_NUMBER,
    InvalidTemplate,
    text_template,
)
from stepflow.activities.redaction import redact_urls
from stepflow.client.api import StepflowClient
from stepflow.workflows.models import StepStatus
from tests.support.helpers import pipeline, step
from tests.support.processes import ROOT, free_port

# --- text_template: bounded format specs -------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "values", "placeholder"),
    [
        ("{x:>2000000000}", {"x": "a"}, "{x}"),
        ("{x:.999999999f}", {"x": 1.5}, "{x}"),
        ("{x:0>999999999}", {"x": 7}, "{x}"),
        ("a {x:{w}} b", {"x": "a", "w": 2_000_000_000}, "{x}"),
        ("{x:.{p}f}", {"x": 1.5, "p": 999_999_999}, "{x}"),
        ("{user[name]:^100000}", {"user": {"name": "ada"}}, "{user[name]}"),
        ("{x!r:>100000}", {"x": "a"}, "{x}"),
    ],
)
def test_text_template_refuses_huge_widths_and_precisions(
    template: str, values: dict[str, object], placeholder: str
) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidTemplate) as err:
        text_template(template, values)
    assert time.monotonic() - started < 1  # refused before anything big was built
    assert err.value.non_retryable
    message = str(err.value)
    assert placeholder in message, message
    assert f"at most {MAX_FORMAT_NUMBER:,}" in message, message


def test_text_template_keeps_ordinary_widths_and_the_limit_itself() -> None:
    assert text_template("{x:>5}|{y:.2f}|{z:{w}}", {"x": "a", "y": 1.234, "z": 1, "w": 3}) == (
        "    a|1.23|  1"
    )
    assert len(text_template(f"{{x:>{MAX_FORMAT_NUMBER}}}", {"x": "a"})) == MAX_FORMAT_NUMBER
    assert text_template("{x:9>4}", {"x": 1}) == "9991"  # a digit as the fill character


def test_text_template_bounds_the_whole_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many fields at the largest width still cannot add up past the output limit."""
    monkeypatch.setenv("STEPFLOW_TOOL_MAX_OUTPUT_BYTES", "100000")
    template = f"{{x:>{MAX_FORMAT_NUMBER}}}" * 1000  # would be about 4 MB
    with pytest.raises(InvalidTemplate) as err:
        text_template(template, {"x": "a"})
    assert err.value.non_retryable
    assert "100,000" in str(err.value)
    assert "STEPFLOW_TOOL_MAX_OUTPUT_BYTES" in str(err.value)


def test_text_template_documents_the_limit() -> None:
    definition = registry.get_tool("text_template")
    assert definition is not None
    assert f"{MAX_FORMAT_NUMBER:,}" in definition.description


# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://user:pa55@host.example/x failed", "GET https://***@host.example/x failed"),
        ("see http://tok3n@github.com/a.git", "see http://***@github.com/a.git"),
        ("https://u:p@ss@h.example:8443/p?q=1", "https://***@h.example:8443/p?q=1"),
        (
            "https://h.example/p?token=abc&page=2&api_key=k1&Access_Token=t2",
            "https://h.example/p?token=***&page=2&api_key=***&Access_Token=***",
        ),
        (
            "'https://h/x?sig=s1&key=k2&secret=s3&password=p4&X-Amz-Signature=s5&client_secret=c'",
            "'https://h/x?sig=***&key=***&secret=***&password=***&X-Amz-Signature=***"
            "&client_secret=***'",
        ),
        ("https://h/x#access_token=t1&state=ok", "https://h/x#access_token=***&state=ok"),
        ("https://h/x?monkey=1&keyword=python&author=me", None),  # not secrets: kept
        ("no url here, key=value in prose", None),
        ("ftp://anon:mail@files.example/", "ftp://***@files.example/"),
    ],
)
def test_redact_urls(text: str, expected: str | None) -> None:
    assert redact_urls(text) == (text if expected is None else expected)


# --- http_get errors, through a real worker ----------------------------------------------------


async def test_http_get_errors_in_step_records_hold_no_credentials(
    worker: None, stepflow: StepflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused_port = free_port()
    monkeypatch.setenv("STEPFLOW_HTTP_ALLOW_HOSTS", "127.0.0.1")
    secrets = ["hunter2pw", "tok-7f3a9", "key-51c0", "sig-0d9e", "alice-user"]
    refused = (
        f"http://alice-user:hunter2pw@127.0.0.1:{refused_port}/x?token=tok-7f3a9&api_key=key-51c0"
    )
    not_allowed = "https://alice-user:hunter2pw@evil.example/y?sig=sig-0d9e&page=3"
    once = {"max_attempts": 1}
    spec = pipeline(
        step("refused", "http_get", args={"url": refused}, retry=once, on_failure="continue"),
        step("denied", "http_get", args={"url": not_allowed}, retry=once, on_failure="continue"),
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    for step_id, shown in [
        ("refused", f"http://***@127.0.0.1:{refused_port}/x?token=***&api_key=***"),
        ("denied", "https://***@evil.example/y?sig=***&page=3"),
    ]:
        record = result.step(step_id)
        assert record.status is StepStatus.FAILED
        assert record.error is not None
        assert shown in record.error, record.error
        for secret in secrets:
            assert secret not in record.error, record.error
    # Nor does history: the failures and the causes they carry (the URL itself is in the
    # step's arguments, which the pipeline's author wrote).
    history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()
    failures = [
        event.activity_task_failed_event_attributes.failure.SerializeToString()
        for event in history.events
        if event.HasField("activity_task_failed_event_attributes")
    ]
    assert len(failures) == 2
    for failure in failures:
        for secret in secrets:
            assert secret.encode() not in failure, failure


async def test_any_tool_error_that_quotes_a_url_keeps_its_credentials_out_of_history(
    worker: None, stepflow: StepflowClient
) -> None:
    # A tool of the user's own, raising whatever its HTTP library says.
    message = "GET https://bob:pw-31337@api.example/v1?access_token=tok-9Z8y failed: 503"
    spec = pipeline(
        step(
            "call",
            "fail",
            args={"message": message, "error": "HTTPError"},
            retry={"max_attempts": 1},
        )
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    record = result.step("call")
    assert record.status is StepStatus.FAILED and record.error_type == "HTTPError"
    assert record.error == "GET https://***@api.example/v1?access_token=*** failed: 503"
    history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()
    failed = [
        event.activity_task_failed_event_attributes.failure.SerializeToString()
        for event in history.events
        if event.HasField("activity_task_failed_event_attributes")
    ]
    assert len(failed) == 1  # the failure and the cause it carries
    assert b"pw-31337" not in failed[0] and b"tok-9Z8y" not in failed[0]


# --- the import path of tool modules -----------------------------------------------------------

PROBE_MODULE = "stepflow_cwd_probe_tools"
PROBE_SOURCE = '''
from stepflow import tool


@tool
def cwd_probe() -> str:
    """A tool that lives in the current directory."""
    return "found"
'''


@pytest.fixture
def probe_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory, holding a tool module; sys.path and the registry restored after."""
    (tmp_path / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delenv("STEPFLOW_IMPORT_PATH", raising=False)
    yield tmp_path
    sys.modules.pop(PROBE_MODULE, None)
    registry._REGISTRY.pop("cwd_probe", None)


def test_the_current_directory_is_not_importable_unless_configured(
    probe_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ImportError) as err:
        registry.load_tool_modules([PROBE_MODULE])
    message = str(err.value)
    assert f"cannot import tool module {PROBE_MODULE!r}" in message
    assert "STEPFLOW_IMPORT_PATH" in message
    assert str(probe_dir) not in sys.path

    monkeypatch.setenv("STEPFLOW_IMPORT_PATH", ".")
    names = [t.name for t in registry.load_tool_modules([PROBE_MODULE])]
    assert "cwd_probe" in names
    assert str(probe_dir) in sys.path  # resolved when loaded: a later chdir changes nothing


def test_the_import_path_takes_several_directories(
    probe_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("STEPFLOW_IMPORT_PATH", f"{elsewhere}:{probe_dir}")
    assert "cwd_probe" in [t.name for t in registry.load_tool_modules([PROBE_MODULE])]


def _stepflow_tools(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m stepflow.client.cli tools` in `cwd`: Python puts cwd first on sys.path."""
    base = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "STEPFLOW_TOOL_MODULES": PROBE_MODULE,
        "STEPFLOW_HOME": str(cwd / ".stepflow"),
    }
    return subprocess.run(
        [sys.executable, "-m", "stepflow.client.cli", "tools"],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_dash_m_does_not_import_tools_from_the_current_directory(probe_dir: Path) -> None:
    refused = _stepflow_tools(probe_dir)
    assert refused.returncode == 2, refused
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"stepflow: cannot import tool module {PROBE_MODULE!r}"), line
    assert "STEPFLOW_IMPORT_PATH" in line

    allowed = _stepflow_tools(probe_dir, STEPFLOW_IMPORT_PATH=".")
    assert allowed.returncode == 0, allowed
    assert "cwd_probe" in allowed.stdout


def test_a_tool_module_whose_own_import_fails_is_not_sent_to_the_import_path(
    probe_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (probe_dir / f"{PROBE_MODULE}.py").write_text("import stepflow_no_such_dependency\n")
    monkeypatch.setenv("STEPFLOW_IMPORT_PATH", ".")
    with pytest.raises(ImportError) as err:
        registry.load_tool_modules([PROBE_MODULE])
    message = str(err.value)
    assert "No module named 'stepflow_no_such_dependency'" in message
    assert "STEPFLOW_IMPORT_PATH" not in message  # the module was found; its dependency was not
