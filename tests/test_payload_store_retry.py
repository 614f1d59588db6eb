"""A payload store that fails for now is retried; one that refuses for good fails at once.

Against moto's S3 server on 127.0.0.1, behind a small HTTP proxy that answers
503 SlowDown to the first requests, as S3 does under load.
"""

from __future__ import annotations

import errno
import http.client
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aioboto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, NoCredentialsError
from moto.server import ThreadedMotoServer
from temporalio.client import Client

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.payload_storage import (
    PAYLOAD_STORE_FAILED,
    PAYLOAD_STORE_UNAVAILABLE,
    stepflow_data_converter,
    store_error_is_transient,
)
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.models import StepStatus
from tests.support.big_tools import big_value
from tests.support.helpers import pipeline, step
from tests.support.tools import journal_read

BUCKET = f"stepflow-retry-{uuid.uuid4().hex[:12]}"
"""Its own bucket: moto keeps every server's buckets in one in-process backend."""
SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FlakyProxy:
    """Forwards HTTP requests to `upstream`, answering 503 SlowDown to the first `fail` of them."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.fail = 0
        self.refused = 0
        self.forwarded = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    refuse = proxy.refused < proxy.fail
                    if refuse:
                        proxy.refused += 1
                    else:
                        proxy.forwarded += 1
                if refuse:
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                length_header = response.getheader("Content-Length")
                self.send_header(
                    "Content-Length",
                    length_header if self.command == "HEAD" and length_header else str(len(data)),
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def s3_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    """moto's S3 with the bucket made, reached through a `FlakyProxy` (AWS_* point at it)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        with FlakyProxy(server.get_host_and_port()) as proxy:
            for name, value in {
                "AWS_ENDPOINT_URL_S3": proxy.url,
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
                # botocore's own retries off: what is retried here is Stepflow's rule.
                "AWS_MAX_ATTEMPTS": "1",
            }.items():
                monkeypatch.setenv(name, value)
            yield proxy
    finally:
        server.stop()


@asynccontextmanager
async def s3_worker(
    temporal_client: Client, monkeypatch: pytest.MonkeyPatch, bucket: str
) -> AsyncIterator[StepflowClient]:
    monkeypatch.setenv("STEPFLOW_PAYLOAD_STORE", "s3")
    monkeypatch.setenv("STEPFLOW_PAYLOAD_S3_BUCKET", bucket)
    configured = Settings()
    config = temporal_client.config()
    config["data_converter"] = stepflow_data_converter(configured)
    client = Client(**config)
    async with build_worker(client, configured, tools=load_tool_modules(configured.tool_modules)):
        yield StepflowClient(client, settings=configured)


def _big_step(journal: str) -> dict[str, object]:
    return step(
        "big",
        "big_text",
        args={"journal": journal, "size": 1_000_000},
        retry={"max_attempts": 5, "initial_interval": "100ms", "backoff_coefficient": 1.0},
    )


async def test_a_503_from_s3_is_retried_until_the_store_keeps_the_output(
    s3_proxy: FlakyProxy,
    temporal_client: Client,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    journal: str,
) -> None:
    async with aioboto3.Session().client("s3") as s3:
        await s3.create_bucket(Bucket=BUCKET)
    s3_proxy.fail = 2  # the first two attempts meet a 503 SlowDown
    async with s3_worker(temporal_client, monkeypatch, BUCKET) as stepflow:
        run = await stepflow.start_pipeline(pipeline(_big_step(journal)))
        result = await stepflow.get_result(run.workflow_id)
        history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()

    record = result.step("big")
    assert (record.status, record.attempts) == (StepStatus.SUCCEEDED, 3), record
    assert record.output == big_value(1_000_000)
    assert s3_proxy.refused == 2
    assert len(journal_read(journal)) == 3  # the tool ran again: its result was never kept
    # The failed attempts were retryable, typed PayloadStoreUnavailable, and said why.
    [pending] = [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert pending.attempt == 3
    # (The server may wrap a long failure in "Failure exceeds size limit.": look down the chain.)
    failure = pending.last_failure
    while not failure.message.startswith("the result of") and failure.HasField("cause"):
        failure = failure.cause
    assert failure.application_failure_info.type == PAYLOAD_STORE_UNAVAILABLE, pending
    assert not failure.application_failure_info.non_retryable
    assert failure.message.startswith("the result of tool 'big_text' is 1,000,0"), failure
    assert "which could not keep it for now" in failure.message, failure.message
    assert "SlowDown" in failure.message or "503" in failure.message, failure.message


async def test_a_missing_bucket_fails_at_once(
    s3_proxy: FlakyProxy,
    temporal_client: Client,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    journal: str,
) -> None:
    async with s3_worker(temporal_client, monkeypatch, "no-such-bucket") as stepflow:
        result = await stepflow.run_pipeline(pipeline(_big_step(journal)))

    record = result.step("big")
    assert (record.status, record.error_type, record.attempts) == (
        StepStatus.FAILED,
        PAYLOAD_STORE_FAILED,
        1,
    )
    assert len(journal_read(journal)) == 1
    assert "NoSuchBucket" in (record.error or ""), record.error


def _client_error(code: str, status: int) -> ClientError:
    """botocore's error for an S3 answer, as its parser builds it."""
    response: Any = {
        "Error": {"Code": code, "Message": "..."},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_client_error("SlowDown", 503), True),
        (_client_error("503", 0), True),  # a HEAD's error: the status as the code
        (_client_error("InternalError", 500), True),
        (_client_error("RequestTimeout", 400), True),
        (_client_error("ThrottlingException", 400), True),
        (_client_error("TooManyRequests", 429), True),
        (_client_error("AccessDenied", 403), False),
        (_client_error("NoSuchBucket", 404), False),
        (_client_error("InvalidAccessKeyId", 403), False),
        (ConnectionClosedError(endpoint_url="http://s3"), True),
        (NoCredentialsError(), False),
        (TimeoutError(), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (OSError(errno.ESTALE, "stale handle"), True),
        (OSError(errno.ENOSPC, "no space left on device"), False),
        (PermissionError(errno.EACCES, "denied"), False),
        (NotADirectoryError(errno.ENOTDIR, "not a directory"), False),
        (ValueError("payload over max_payload_size"), False),
    ],
)
def test_which_store_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert store_error_is_transient(error) is transient
    # As the SDK's S3 driver raises them: wrapped in its own error.
    try:
        try:
            raise error
        except BaseException as cause:
            raise RuntimeError("S3StorageDriver store failed [bucket=b, key=k]") from cause
    except RuntimeError as wrapped:
        assert store_error_is_transient(wrapped) is transient
