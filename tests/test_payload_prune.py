"""`stepflow payloads prune`: old payloads of finished runs go; what an open run uses stays.

Against the session's dev server: one run finishes, another waits on an approval
step, every stored file is made 60 days old (os.utime), and the real `stepflow`
command prunes the store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.client.payload_prune import message_digests
from stepflow.runtime.encryption import EncryptionCodec, parse_keys
from stepflow.runtime.payload_storage import (
    LocalPayloadDriver,
    PayloadStoreError,
    referenced_digests,
    stepflow_data_converter,
    stored_files,
)
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.big_tools import big_value
from tests.support.helpers import pipeline, step
from tests.support.processes import ok, one_error_line, process_env, stepflow_cli

SIXTY_DAYS = 60 * 86400


def _files(store: Path) -> dict[Path, float]:
    return {file.path: file.modified for file in stored_files(store)}


def _age_everything(store: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in _files(store):
        os.utime(path, (then, then))


async def _wait_for_step(stepflow: StepflowClient, workflow_id: str, step_id: str) -> None:
    for _ in range(200):
        state = await stepflow.status(workflow_id)
        if any(r.id == step_id and r.status is StepStatus.WAITING for r in state.steps):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{step_id} never waited")


async def test_prune_removes_old_payloads_of_finished_runs_and_keeps_those_open_runs_use(
    temporal_env: WorkflowEnvironment,
    temporal_client: Client,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    journal: str,
) -> None:
    store = tmp_path / "payloads"
    monkeypatch.setenv("STEPFLOW_PAYLOAD_DIR", str(store))
    configured = Settings()
    config = temporal_client.config()
    config["data_converter"] = stepflow_data_converter(configured)
    client = Client(**config)
    stepflow = StepflowClient(client, settings=configured)
    cli_env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_PAYLOAD_DIR=str(store),
        COLUMNS="300",
    )

    async with build_worker(client, configured, tools=load_tool_modules(configured.tool_modules)):
        done = await stepflow.run_pipeline(
            pipeline(step("big", "big_text", args={"journal": journal, "size": 300_000}))
        )
        assert done.status is PipelineStatus.SUCCEEDED
        of_finished_run = set(_files(store))
        assert of_finished_run  # its output and its result were stored

        waiting = await stepflow.start_pipeline(
            pipeline(
                step("big", "big_text", args={"journal": journal, "size": 400_000}),
                {"id": "gate", "kind": "approval", "depends_on": ["big"]},
            )
        )
        await _wait_for_step(stepflow, waiting.workflow_id, "gate")
        history = await client.get_workflow_handle(waiting.workflow_id).fetch_history()
        in_use = referenced_digests(History(events=history.events).SerializeToString())
        assert in_use  # the waiting run's history refers to its stored output
        _age_everything(store, SIXTY_DAYS)
        [fresh] = await LocalPayloadDriver(store).store(None, [Payload(data=b"x" * 1000)])  # type: ignore[arg-type]
        before = _files(store)

        # --dry-run: lists what would go, removes nothing (and refreshes no time).
        dry = ok(await stepflow_cli(cli_env, "payloads", "prune", "--dry-run", "--json"))
        report: dict[str, Any] = json.loads(dry.stdout)
        assert _files(store) == before
        would_go = {Path(path) for path in report["removed"]}
        assert of_finished_run <= would_go, report  # (the rest: answers to status queries)
        assert not {p.name for p in would_go} & in_use
        assert report["dry_run"] is True and report["older_than"] == "30d"
        assert report["open_runs"] >= 1

        # The real thing, with the default retention (STEPFLOW_PAYLOAD_RETENTION, 30 days).
        pruned = ok(await stepflow_cli(cli_env, "payloads", "prune"))
        after = _files(store)
        assert set(after) == set(before) - would_go, pruned.stderr
        assert of_finished_run.isdisjoint(after)  # old and used by no open run: gone
        kept = {file.digest for file in stored_files(store)}
        assert in_use <= kept  # old, but the waiting run refers to them: kept
        assert fresh.claim_data["key"].removeprefix("sha256/") in kept  # unused but new: kept
        assert f"removed {len(would_go)} payloads" in pruned.stderr, pruned.stderr

        # The waiting run reads its stored output back and finishes.
        await stepflow.approve(waiting.workflow_id, "gate")
        result = await stepflow.get_result(waiting.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("big").output == big_value(400_000)


async def test_prune_with_a_shorter_age_and_a_bad_one(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    store = tmp_path / "payloads"
    driver = LocalPayloadDriver(store)
    await driver.store(None, [Payload(data=b"y" * 1000)])  # type: ignore[arg-type]
    _age_everything(store, 2 * 3600)
    cli_env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_PAYLOAD_DIR=str(store),
        STEPFLOW_PAYLOAD_RETENTION="1d",
    )

    kept = ok(await stepflow_cli(cli_env, "payloads", "prune"))  # 2 hours < 1 day
    assert "removed 0 payloads" in kept.stderr and len(_files(store)) == 1, kept.stderr
    gone = ok(await stepflow_cli(cli_env, "payloads", "prune", "--older-than", "1h"))
    assert "removed 1 payloads" in gone.stderr and _files(store) == {}, gone.stderr
    one_error_line(
        await stepflow_cli(cli_env, "payloads", "prune", "--older-than", "soon"),
        "--older-than 'soon'",
    )


async def test_an_encrypted_reference_is_read_with_the_codec_or_nothing_is_pruned() -> None:
    """The SDK may one day encrypt references too (marked `__temporal_external_storage_...`)."""
    digest = "ab" * 32
    reference = Payload(
        metadata={"encoding": b"json/protobuf"},
        data=b'{"driverName": "stepflow.local", "claimData": {"key": "sha256/'
        + digest.encode()
        + b'"}}',
    )
    codec = EncryptionCodec(parse_keys(base64.b64encode(b"k" * 32).decode()))
    [encrypted] = await codec.encode([reference])
    encrypted.metadata["__temporal_external_storage_reference"] = b"true"
    event = HistoryEvent()
    event.activity_task_completed_event_attributes.result.payloads.append(encrypted)
    history = History(events=[event])

    assert digest.encode() not in history.SerializeToString()
    assert await message_digests(history, codec, "run r") == {digest}
    other = EncryptionCodec(parse_keys(base64.b64encode(b"o" * 32).decode()))
    with pytest.raises(PayloadStoreError, match="nothing was removed"):
        await message_digests(history, other, "run r")
