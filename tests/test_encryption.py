"""Payload encryption: what Temporal keeps is ciphertext, and whoever has the keys reads it all.

A run with every kind of private content (its description, an input, an agent's
instructions, a model's reply and tool call, a tool's arguments and output, a
large output kept in the payload store, an error message) is read back raw,
without the codec, where none of it may show, and by the Stepflow client with
the keys, where all of it does. Then keys are rotated, lost and misconfigured.
The codec server, the `temporal` CLI and the Web UI: tests/test_codec_server.py.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload, WorkflowExecution
from temporalio.api.query.v1 import WorkflowQuery
from temporalio.api.sdk.v1.external_storage_pb2 import ExternalStorageReference
from temporalio.api.workflowservice.v1 import QueryWorkflowRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from stepflow.runtime.encryption import (
    ENCODING,
    EncryptionCodec,
    EncryptionError,
    key_id_of,
    parse_keys,
    readable_failure,
)
from stepflow.runtime.payload_storage import stepflow_data_converter
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import PipelineStatus
from tests.support.control_tools import wait_step
from tests.support.encrypted import (
    DESCRIPTION,
    ERROR,
    LARGE,
    MODEL_OUTPUT,
    NEW_KEY,
    OLD_KEY,
    PROMPT,
    STEP_ARGUMENT,
    TOPIC,
    EncryptedWorker,
    encrypted_worker,
    leaked,
    private_pipeline,
    raw_bytes,
    script_agent,
)
from tests.support.helpers import pipeline, step
from tests.support.model_server import ScriptedModelServer
from tests.support.processes import ROOT, one_error_line, process_env, stepflow_cli
from tests.support.waiting import wait_until

REFERENCE_TYPE = ExternalStorageReference.DESCRIPTOR.full_name.encode()
"""The `messageType` of a payload store reference."""


@pytest.fixture
def encrypted(
    temporal_client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> EncryptedWorker:
    """Workers and clients with keys, on the test's queue (`settings` puts it in the environment)."""
    return encrypted_worker(temporal_client, monkeypatch, tmp_path)


async def test_history_and_the_payload_store_hold_no_private_content_in_the_clear(
    encrypted: EncryptedWorker, model_server: ScriptedModelServer, temporal_env: WorkflowEnvironment
) -> None:
    script_agent(model_server)
    async with encrypted(OLD_KEY) as run:
        started = await run.stepflow.start_pipeline(private_pipeline(), {"topic": TOPIC})
        result = await run.stepflow.get_result(started.workflow_id)

        # The client with the key reads everything back.
        assert result.status is PipelineStatus.FAILED
        assert result.step("note").output == f"{STEP_ARGUMENT} about {TOPIC}"
        assert result.step("large").output.startswith(LARGE)
        assert result.step("research").output == MODEL_OUTPUT
        assert result.step("publish").error == ERROR
        assert result.error is not None and ERROR in result.error
        handle = run.stepflow.temporal.get_workflow_handle(started.workflow_id)
        assert (await (await handle.describe()).memo())["description"] == DESCRIPTION
        # Failures read from raw history (as `stepflow history` does) open with the key.
        failed = [
            event.workflow_execution_failed_event_attributes.failure
            for event in (await handle.fetch_history()).events
            if event.HasField("workflow_execution_failed_event_attributes")
        ]
        assert failed and failed[0].message == "Encoded failure"
        converter = run.stepflow.temporal.data_converter
        assert ERROR in (await readable_failure(converter, failed[0])).message
        # Queries answer in ciphertext too: the status, and the current details the UI shows.
        for query in ("status", "__temporal_workflow_metadata"):
            answer = await run.stepflow.temporal.workflow_service.query_workflow(
                QueryWorkflowRequest(
                    namespace="default",
                    execution=WorkflowExecution(workflow_id=started.workflow_id),
                    query=WorkflowQuery(query_type=query),
                )
            )
            [payload] = answer.query_result.payloads
            # (The status holds the large output: it is kept in the store, encrypted, and the
            # answer is a reference to it.)
            reference = payload.metadata.get("messageType") == REFERENCE_TYPE
            assert payload.metadata["encoding"] == ENCODING or reference, query
            assert leaked(payload.data) == []

    # The model saw the prompt and the input: the markers reached the real places.
    assert PROMPT in model_server.requests[0].text and TOPIC in model_server.requests[0].text

    # Read without the codec, as the server, the Web UI or `temporal workflow show` see it.
    plain = await Client.connect(
        temporal_env.client.service_client.config.target_host, namespace="default"
    )
    histories = [
        await plain.get_workflow_handle(workflow_id).fetch_history()
        for workflow_id in (started.workflow_id, f"{started.workflow_id}/research")
    ]
    kept = raw_bytes(*histories)
    assert ENCODING in kept and key_id_of(b"o" * 32).encode() in kept
    assert leaked(kept) == []
    # Failure messages and stack traces are encrypted too; the failure's type is not.
    assert b"Encoded failure" in kept and b"PipelineFailed" in kept
    # So are the summaries the Web UI lists activities by; names and ids stay readable.
    assert "note · tool echo".encode() not in kept
    assert b"tool_echo" in kept and f"{started.workflow_id}/research".encode() in kept
    described_raw = await plain.get_workflow_handle(started.workflow_id).describe()
    memo = described_raw.raw_description.workflow_execution_info.memo
    assert leaked(memo.SerializeToString()) == [] and memo.fields["description"].data

    # The large output went to the payload store: encrypted there as well.
    files = [p for p in run.store.rglob("*") if p.is_file()]
    assert files, "the large output should have been stored"
    for path in files:
        stored = Payload.FromString(path.read_bytes())
        assert stored.metadata["encoding"] == ENCODING
        assert leaked(path.read_bytes()) == []


async def test_stepflow_history_shows_the_decrypted_error(
    encrypted: EncryptedWorker, model_server: ScriptedModelServer
) -> None:
    script_agent(model_server)
    async with encrypted(OLD_KEY) as run:
        started = await run.stepflow.start_pipeline(private_pipeline(), {"topic": TOPIC})
        await run.stepflow.get_result(started.workflow_id)
        timeline = await run.stepflow.history(started.workflow_id)
    assert any(ERROR in event.what for event in timeline), [event.what for event in timeline]


async def test_a_rotated_keyring_reads_old_runs_and_a_missing_key_is_one_clear_line(
    encrypted: EncryptedWorker, temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    spec = pipeline(step("note", "echo", args={"value": STEP_ARGUMENT}), name="rotation")
    async with encrypted(OLD_KEY) as run:
        old_id = (await run.stepflow.start_pipeline(spec)).workflow_id
        assert (await run.stepflow.get_result(old_id)).status is PipelineStatus.SUCCEEDED
    # The new key goes first (it encrypts); the old one stays to decrypt older runs.
    async with encrypted(f"2026-11:{NEW_KEY},{OLD_KEY}") as run:
        new_id = (await run.stepflow.start_pipeline(spec)).workflow_id
        assert (await run.stepflow.get_result(new_id)).step("note").output == STEP_ARGUMENT
        assert (await run.stepflow.get_result(old_id)).step("note").output == STEP_ARGUMENT
        history = await run.stepflow.temporal.get_workflow_handle(new_id).fetch_history()
        assert b"2026-11" in raw_bytes(history)

    # A client that lost the old key: one line naming the key it needs, exit code 2.
    address = temporal_env.client.service_client.config.target_host
    env = process_env(
        address,
        STEPFLOW_ENCRYPTION_KEY=f"2026-11:{NEW_KEY}",
        STEPFLOW_PAYLOAD_DIR=str(tmp_path / "payloads"),
    )
    line = one_error_line(await stepflow_cli(env, "result", old_id), key_id_of(b"o" * 32))
    assert "not among this process's keys (2026-11)" in line
    assert OLD_KEY not in line and NEW_KEY not in line
    # One with no key at all.
    env.pop("STEPFLOW_ENCRYPTION_KEY")
    one_error_line(await stepflow_cli(env, "result", new_id), "has no key")


async def test_a_worker_without_the_key_leaves_the_run_waiting_until_the_key_is_back(
    encrypted: EncryptedWorker,
) -> None:
    spec = pipeline(
        step("note", "echo", args={"value": STEP_ARGUMENT}),
        {
            "id": "sign",
            "kind": "approval",
            "timeout": "3s",
            "on_timeout": "approve",
            "depends_on": ["note"],
        },
        name="lost-key",
    )
    async with encrypted(OLD_KEY) as run:
        workflow_id = (await run.stepflow.start_pipeline(spec)).workflow_id
        handle = run.stepflow.temporal.get_workflow_handle(workflow_id)
        await wait_step(handle, "sign", "WAITING")
    # The approval's timer fires while only a worker without the old key is there: it cannot
    # read the run's history, and fails the workflow task with the key it needs.
    async with encrypted(f"2026-11:{NEW_KEY}") as run:
        converter = run.stepflow.temporal.data_converter

        failures: list[str] = []

        async def task_failed() -> bool:
            events = (await handle.fetch_history()).events
            failures[:] = [
                (
                    await readable_failure(
                        converter, event.workflow_task_failed_event_attributes.failure
                    )
                ).message
                for event in events
                if event.HasField("workflow_task_failed_event_attributes")
            ]
            return bool(failures)

        await wait_until(task_failed, "the workflow task to fail")
        assert key_id_of(b"o" * 32) in failures[0]
    # Temporal retries the task; a worker with both keys finishes the run.
    async with encrypted(f"2026-11:{NEW_KEY},{OLD_KEY}") as run:
        result = await run.stepflow.get_result(workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("sign").output["by"] == "timeout"


async def test_the_codec_decrypts_by_key_id_and_refuses_what_it_cannot_read() -> None:
    value = await pydantic_data_converter.encode([{"secret": STEP_ARGUMENT}])
    old = EncryptionCodec(parse_keys(OLD_KEY))
    [sealed] = await old.encode(value)
    assert sealed.metadata["encoding"] == ENCODING and STEP_ARGUMENT.encode() not in sealed.data
    assert sealed.metadata["encryption-key-id"] == key_id_of(b"o" * 32).encode()
    # Random nonces: the same value never encrypts the same way twice.
    assert (await old.encode(value))[0].data != sealed.data

    rotated = EncryptionCodec(parse_keys(f"new:{NEW_KEY},{OLD_KEY}"))
    assert await rotated.decode([sealed]) == value
    [resealed] = await rotated.encode(value)
    assert resealed.metadata["encryption-key-id"] == b"new"
    # Payloads written before encryption was turned on still read.
    assert await rotated.decode(value) == value

    with pytest.raises(EncryptionError, match="not among this process's keys \\(new\\)"):
        await EncryptionCodec(parse_keys(f"new:{NEW_KEY}")).decode([sealed])
    with pytest.raises(EncryptionError, match="this process has no key"):
        await EncryptionCodec([]).decode([sealed])
    # The same id on another key (a key replaced in place), or altered data: never garbage.
    impostor = EncryptionCodec(parse_keys(f"{key_id_of(b'o' * 32)}:{NEW_KEY}"))
    with pytest.raises(EncryptionError, match="does not decrypt"):
        await impostor.decode([sealed])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(EncryptionError, match="does not decrypt"):
        await old.decode([tampered])
    tampered.data = sealed.data[:20]  # shorter than a nonce and a tag
    with pytest.raises(EncryptionError, match="does not decrypt"):
        await old.decode([tampered])


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("not-base64!", "key 1 is not base64"),
        (base64.b64encode(b"short").decode(), "key 1 is 5 bytes; AES-256 needs 32"),
        (f"a:{OLD_KEY},a:{NEW_KEY}", "the id 'a' is given to two keys"),
        (f"bad id:{OLD_KEY}", "key 1 has a bad id: write ID:KEY"),
        # Written the wrong way round, the "id" is the key: the message must not show it.
        (f"{OLD_KEY}:main", "key 1 has a bad id: write ID:KEY"),
    ],
)
async def test_a_bad_key_stops_the_worker_and_the_cli_with_one_line_and_no_key_material(
    temporal_env: WorkflowEnvironment, tmp_path: Path, keys: str, expected: str
) -> None:
    env = process_env(
        temporal_env.client.service_client.config.target_host, STEPFLOW_ENCRYPTION_KEY=keys
    )
    line = one_error_line(await stepflow_cli(env, "list"), "STEPFLOW_ENCRYPTION_KEY", expected)
    secrets = [part for part in keys.replace(",", ":").split(":") if len(part) > 8]
    assert not [secret for secret in secrets if secret in line]
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(worker.communicate(), 60)
    assert worker.returncode == 2, err.decode()
    assert err.decode().strip().splitlines() == [
        f"stepflow worker: invalid settings: STEPFLOW_ENCRYPTION_KEY: {line.split(': ', 3)[3]}"
    ]
    assert not [secret for secret in secrets if secret in (out + err).decode()]


async def test_a_key_file_holds_the_keys_and_its_problems_are_named(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2026-11\nnew:{NEW_KEY}\n{OLD_KEY}  # the first key\n")
    settings = Settings(encryption_key_file=key_file)
    codec = stepflow_data_converter(settings).payload_codec
    assert isinstance(codec, EncryptionCodec)
    assert codec.key_ids == ["new", key_id_of(b"o" * 32)]

    env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_ENCRYPTION_KEY_FILE=str(tmp_path / "missing"),
    )
    one_error_line(
        await stepflow_cli(env, "list"), "STEPFLOW_ENCRYPTION_KEY_FILE", "cannot read the key file"
    )
    env["STEPFLOW_ENCRYPTION_KEY_FILE"] = str(key_file)
    env["STEPFLOW_ENCRYPTION_KEY"] = OLD_KEY
    one_error_line(await stepflow_cli(env, "list"), "not both")
