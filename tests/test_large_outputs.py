"""Large outputs: kept in the payload store, referenced from history; never retried forever.

Each test runs its own worker whose client has a data converter built from the
test's payload settings (`runtime.payload_storage`), on the session's server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from moto.server import ThreadedMotoServer
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import StorageDriverClaim, StorageDriverRetrieveContext

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.payload_storage import (
    OUTPUT_TOO_LARGE,
    PAYLOAD_STORE_FAILED,
    LocalPayloadDriver,
    PayloadStoreError,
    stepflow_data_converter,
)
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.big_tools import big_value, digest
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, text, tool_calls
from tests.support.tools import journal_read

StoreWorker = Callable[..., AbstractAsyncContextManager[StepflowClient]]


@pytest.fixture
def store_worker(
    temporal_client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> StoreWorker:
    """`async with store_worker(PAYLOAD_STORE="off") as stepflow:` a worker and client so set.

    The local store is `tmp_path / "payloads"` unless `PAYLOAD_DIR=` says otherwise.
    """

    @asynccontextmanager
    async def start(**payload_env: str) -> AsyncIterator[StepflowClient]:
        payload_env = {"PAYLOAD_DIR": str(tmp_path / "payloads"), **payload_env}
        for name, value in payload_env.items():
            monkeypatch.setenv(f"STEPFLOW_{name}", value)
        configured = Settings()
        client = _client_for(temporal_client, configured)
        tools = load_tool_modules(configured.tool_modules)
        async with build_worker(client, configured, tools=tools):
            yield StepflowClient(client, settings=configured)

    return start


def _client_for(client: Client, settings: Settings) -> Client:
    """The same connection, with the data converter (and payload store) of `settings`."""
    config = client.config()
    config["data_converter"] = stepflow_data_converter(settings)
    return Client(**config)


def _activity_results(history: WorkflowHistory) -> list[Payload]:
    return [
        event.activity_task_completed_event_attributes.result.payloads[0]
        for event in history.events
        if event.HasField("activity_task_completed_event_attributes")
    ]


def _stored_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


async def test_a_10_mb_output_flows_to_its_dependent_and_to_the_result(
    store_worker: StoreWorker, tmp_path: Path, journal: str
) -> None:
    store = tmp_path / "payloads"
    spec = pipeline(
        step("big", "big_text", args={"journal": journal, "size": 10_000_000}),
        step("check", "measure", args={"text": "{{ steps.big.output }}"}, depends_on=["big"]),
    )
    expected = big_value(10_000_000)
    async with store_worker() as stepflow:
        run = await stepflow.start_pipeline(spec)
        result = await stepflow.get_result(run.workflow_id)

        assert result.status is PipelineStatus.SUCCEEDED
        big = result.step("big")
        assert (big.status, big.attempts) == (StepStatus.SUCCEEDED, 1)
        assert big.output == expected  # read back by the client, whole
        # The dependent received it intact, through its activity's (stored) input.
        assert result.step("check").output == {"length": 10_000_000, "sha256": digest(expected)}
        assert len(journal_read(journal)) == 1

        # History holds references: the 10 MB value is in it three times over
        # (the tool's result, the dependent's input, the run's result), but stays small.
        history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()
        size = History(events=history.events).ByteSize()
        assert size < 200_000, size
        stored = _activity_results(history)[0]
        assert stored.external_payloads[0].size_bytes > 10_000_000
        assert len(stored.data) < 1_000
        assert max(f.stat().st_size for f in _stored_files(store)) > 10_000_000

        # The timeline and the status query read the stored payloads back too.
        timeline = [(e.subject, e.what) for e in await stepflow.history(run.workflow_id)]
        assert ("big · tool big_text", "completed (attempt 1)") in timeline, timeline
        assert timeline[-1] == ("run", "completed"), timeline
        state = await stepflow.status(run.workflow_id)
        assert state.steps[0].output == expected

    # A client on another store cannot read the result, and says why.
    other = Settings(payload_dir=tmp_path / "elsewhere")
    elsewhere = StepflowClient(_client_for(stepflow.temporal, other), settings=other)
    with pytest.raises(PayloadStoreError, match="must use the same store"):
        await elsewhere.get_result(run.workflow_id)


async def test_a_small_output_stays_in_history(
    store_worker: StoreWorker, tmp_path: Path, journal: str
) -> None:
    store = tmp_path / "payloads"
    spec = pipeline(step("small", "big_text", args={"journal": journal, "size": 1_000}))
    async with store_worker() as stepflow:
        run = await stepflow.start_pipeline(spec)
        result = await stepflow.get_result(run.workflow_id)
        history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()

    assert result.step("small").output == big_value(1_000)
    [inline] = _activity_results(history)
    assert not inline.external_payloads
    assert big_value(1_000).encode() in inline.data
    assert _stored_files(store) == []


@pytest.mark.parametrize("tool", ["big_text", "big_text_sync"])
async def test_with_the_store_off_an_output_over_2_mb_fails_its_step_at_once(
    store_worker: StoreWorker, journal: str, tool: str
) -> None:
    spec = pipeline(
        step(
            "big",
            tool,
            args={"journal": journal, "size": 3_000_000},
            retry={"max_attempts": 5, "initial_interval": "100ms"},
        )
    )
    async with store_worker(PAYLOAD_STORE="off") as stepflow:
        result = await stepflow.run_pipeline(spec)

    record = result.step("big")
    assert record.status is StepStatus.FAILED
    assert record.error_type == OUTPUT_TOO_LARGE
    assert record.attempts == 1
    assert len(journal_read(journal)) == 1  # not retried
    assert record.error is not None
    # 3,000,000 characters, in quotes, in a `ToolCallOutput`, in a payload.
    assert re.fullmatch(
        f"the result of tool {tool!r} is 3,000,[0-9]{{3}} bytes, over Temporal's 2,097,152-byte "
        r"payload limit, and the payload store is off \(STEPFLOW_PAYLOAD_STORE=off\)\. Turn it on "
        r"\(STEPFLOW_PAYLOAD_STORE=local or s3, on the worker and the clients\), or return a "
        r"smaller value: write large data to a file and return its path\.",
        record.error,
    ), record.error


async def test_an_output_the_store_cannot_keep_fails_its_step_at_once(
    store_worker: StoreWorker, tmp_path: Path, journal: str
) -> None:
    not_a_directory = tmp_path / "payloads"
    not_a_directory.write_text("a file where the store's directory should be")
    spec = pipeline(
        step(
            "big",
            "big_text",
            args={"journal": journal, "size": 1_000_000},
            retry={"max_attempts": 5, "initial_interval": "100ms"},
        )
    )
    async with store_worker(PAYLOAD_DIR=str(not_a_directory)) as stepflow:
        result = await stepflow.run_pipeline(spec)

    record = result.step("big")
    assert record.status is StepStatus.FAILED
    assert record.error_type == PAYLOAD_STORE_FAILED
    assert record.attempts == 1
    assert len(journal_read(journal)) == 1
    assert record.error is not None
    assert re.match(
        r"the result of tool 'big_text' is 1,000,[0-9]{3} bytes, so it goes to the payload store "
        rf"\(payloads from 262,144 bytes in {re.escape(str(not_a_directory))}\), "
        "which could not keep it: ",
        record.error,
    ), record.error
    assert record.error.endswith(
        f". Fix the store ({not_a_directory} (STEPFLOW_PAYLOAD_DIR) must be a directory the "
        "worker can write), or return a smaller value: write large data to a file and return "
        "its path."
    )


async def test_an_agent_steps_tool_may_return_10_mb_and_the_model_reads_the_start(
    store_worker: StoreWorker, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        tool_calls(("big_text", {"journal": journal, "size": 10_000_000})), text("read it")
    )
    async with store_worker() as stepflow:
        result = await stepflow.run_pipeline(pipeline(agent("a", tools=["big_text"])))

    assert result.step("a").output == "read it"
    content = model_server.requests[1].messages[-1]["content"]
    assert content.startswith(big_value(100_000))
    assert content.endswith("[... 9,900,000 more characters cut by Stepflow]")


async def test_with_the_store_off_an_agent_steps_tool_fails_at_once_and_the_model_is_told(
    store_worker: StoreWorker, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        tool_calls(("big_text", {"journal": journal, "size": 3_000_000})), text("gave up")
    )
    spec = pipeline(agent("a", tools=["big_text"], tool_retry={"max_attempts": 5}))
    async with store_worker(PAYLOAD_STORE="off") as stepflow:
        result = await stepflow.run_pipeline(spec)

    assert result.step("a").output == "gave up"
    assert len(journal_read(journal)) == 1
    error = model_server.requests[1].messages[-1]["content"]
    assert error.startswith("Error: OutputTooLarge: the result of tool 'big_text' is 3,000,")


async def test_the_s3_store_keeps_a_large_output(
    store_worker: StoreWorker, monkeypatch: pytest.MonkeyPatch, journal: str
) -> None:
    """Through the SDK's S3 driver, against moto's S3 server on 127.0.0.1."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        async with aioboto3.Session().client("s3") as s3:
            await s3.create_bucket(Bucket="stepflow-payloads")
        spec = pipeline(
            step("big", "big_text", args={"journal": journal, "size": 3_000_000}),
            step("check", "measure", args={"text": "{{ steps.big.output }}"}, depends_on=["big"]),
        )
        async with store_worker(
            PAYLOAD_STORE="s3", PAYLOAD_S3_BUCKET="stepflow-payloads"
        ) as stepflow:
            result = await stepflow.run_pipeline(spec)
        async with aioboto3.Session().client("s3") as s3:
            listed = await s3.list_objects_v2(Bucket="stepflow-payloads")
        async with store_worker(PAYLOAD_STORE="s3", PAYLOAD_S3_BUCKET="no-such-bucket") as stepflow:
            missing = (await stepflow.run_pipeline(spec)).step("big")
    finally:
        server.stop()

    expected = big_value(3_000_000)
    assert result.step("big").output == expected
    assert result.step("check").output == {"length": 3_000_000, "sha256": digest(expected)}
    keys = [item["Key"] for item in listed["Contents"]]
    assert len(keys) == 3 and all(key.startswith("v0/ns/default/") for key in keys), keys
    assert (missing.error_type, missing.attempts) == (PAYLOAD_STORE_FAILED, 1)
    assert "(payloads from 262,144 bytes in s3://no-such-bucket), which could not" in (
        missing.error or ""
    )
    assert "NoSuchBucket" in (missing.error or "")


async def test_switching_to_s3_still_reads_what_the_local_store_kept(tmp_path: Path) -> None:
    """Runs in flight hold references into the store that kept their values."""
    local = stepflow_data_converter(Settings(payload_store="local", payload_dir=tmp_path))
    s3 = stepflow_data_converter(
        Settings(payload_store="s3", payload_s3_bucket="any", payload_dir=tmp_path)
    )
    value = big_value(300_000)
    [reference] = await local.encode([value])
    assert reference.ByteSize() < 1_000  # stored, not inline
    assert await s3.decode([reference]) == [value]


async def test_the_local_store_follows_no_path_from_a_reference_and_checks_what_it_reads(
    tmp_path: Path,
) -> None:
    driver = LocalPayloadDriver(tmp_path)
    context: Any = None
    [claim] = await driver.store(context, [Payload(data=b"value")])
    [path] = _stored_files(tmp_path)
    assert claim.claim_data == {"key": f"sha256/{path.name}"}
    read = await driver.retrieve(StorageDriverRetrieveContext(), [claim])
    assert read == [Payload(data=b"value")]

    for key in ("../../etc/passwd", f"sha256/{path.name}/..", "sha256/" + "A" * 64):
        forged = StorageDriverClaim(claim_data={"key": key})
        with pytest.raises(PayloadStoreError, match="malformed"):
            await driver.retrieve(StorageDriverRetrieveContext(), [forged])

    path.write_bytes(path.read_bytes() + b"!")
    with pytest.raises(PayloadStoreError, match="damaged"):
        await driver.retrieve(StorageDriverRetrieveContext(), [claim])


async def test_a_rerun_takes_over_a_10_mb_output_from_the_payload_store(
    store_worker: StoreWorker, tmp_path: Path, journal: str
) -> None:
    spec = pipeline(
        step("big", "big_text", args={"journal": journal, "size": 10_000_000}),
        step("check", "measure", args={"text": "{{ steps.big.output }}"}, depends_on=["big"]),
    )
    async with store_worker() as stepflow:
        old = await stepflow.start_pipeline(spec)
        first = await stepflow.get_result(old.workflow_id)
        run = await stepflow.rerun(old.workflow_id, "check")
        result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("big").status is StepStatus.REUSED
    assert result.step("check").output == first.step("check").output
    assert len(journal_read(journal)) == 1  # the 10 MB tool ran once
