"""Results cached across runs: `cache: {ttl: ...}` on tool and agent steps, against the real
dev server. The tools journal every call and the scripted model server counts requests, so
each test shows what a hit saved."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType

from stepflow.activities.registry import get_tool, tool
from stepflow.activities.result_cache import prune_cache
from stepflow.client.api import StepflowClient
from stepflow.runtime.blob_store import BlobStore
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, text
from tests.support.processes import ok, process_env, stepflow_cli
from tests.support.tools import journal_read


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own store (the cache lives beside it), set before the worker starts."""
    directory = tmp_path / "payloads"
    monkeypatch.setenv("STEPFLOW_PAYLOAD_DIR", str(directory))
    return directory


def calls(journal: str) -> int:
    return sum(1 for e in journal_read(journal) if e["event"] == "start")


def cached_record(journal: str, **fields: Any) -> dict[str, Any]:
    return step(
        "fetch",
        "record",
        args={"journal": journal, "value": {"facts": [1, 2, 3]}},
        cache={"ttl": "1h"},
        **fields,
    )


async def test_a_second_run_takes_the_cached_result_without_calling_the_tool(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        cached_record(journal),
        step("use", "echo", depends_on=["fetch"], args={"value": "{{ steps.fetch.output }}"}),
    )
    first_run = await stepflow.start_pipeline(spec)
    first = await stepflow.get_result(first_run.workflow_id)
    second = await stepflow.run_pipeline(spec)

    assert first.status is second.status is PipelineStatus.SUCCEEDED
    assert not first.step("fetch").cached
    fetch = second.step("fetch")
    assert (fetch.status, fetch.cached, fetch.cached_from) == (
        StepStatus.SUCCEEDED,
        True,
        first_run.workflow_id,
    )
    assert second.output("use") == first.output("use") == {"facts": [1, 2, 3]}
    assert calls(journal) == 1


async def test_no_cache_computes_afresh_and_other_args_miss(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(cached_record(journal))
    await stepflow.run_pipeline(spec)
    fresh_run = await stepflow.start_pipeline(spec, no_cache=True)
    fresh = await stepflow.get_result(fresh_run.workflow_id)
    # What --no-cache computed is kept: the next run takes it.
    after = await stepflow.run_pipeline(spec)
    assert after.step("fetch").cached_from == fresh_run.workflow_id
    other = await stepflow.run_pipeline(
        pipeline(
            step("fetch", "record", args={"journal": journal, "value": 2}, cache={"ttl": "1h"})
        )
    )

    assert not fresh.step("fetch").cached and not other.step("fetch").cached
    assert calls(journal) == 3


async def test_an_expired_entry_is_a_miss_and_prune_removes_it(
    worker: None, stepflow: StepflowClient, journal: str, settings: Settings, cache_dir: Path
) -> None:
    spec = pipeline(step("fetch", "record", args={"journal": journal}, cache={"ttl": "1s"}))
    await stepflow.run_pipeline(spec)
    await asyncio.sleep(1.2)
    again = await stepflow.run_pipeline(spec)

    assert not again.step("fetch").cached
    assert calls(journal) == 2
    await asyncio.sleep(1.2)
    assert prune_cache(Settings(), dry_run=True)[0] == 1
    assert prune_cache(Settings())[0] == 1
    assert not list(cache_dir.glob("cache/*/*"))


async def test_cache_false_never_looks_and_failures_are_never_kept(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    failing = pipeline(
        step(
            "broken", "fail", args={"message": "no"}, cache={"ttl": "1h"}, retry={"max_attempts": 1}
        ),
    )
    assert (await stepflow.run_pipeline(failing)).status is PipelineStatus.FAILED
    assert (await stepflow.run_pipeline(failing)).step("broken").cached is False

    off = pipeline(
        step("fetch", "record", args={"journal": journal}, cache=False),
        defaults={"cache": {"ttl": "1h"}},
    )
    run = await stepflow.start_pipeline(off)
    await stepflow.get_result(run.workflow_id)
    history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled == ["tool_record"]


async def test_a_new_tool_version_does_not_take_an_older_version_s_results(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(cached_record(journal))
    await stepflow.run_pipeline(spec)
    definition = get_tool("record")
    assert definition is not None
    tool(name="record", version="2")(definition.fn)  # the same function, a new version
    try:
        newer = await stepflow.run_pipeline(spec)
    finally:
        tool(name="record")(definition.fn)
    assert not newer.step("fetch").cached
    assert calls(journal) == 2


async def test_a_cached_agent_step_makes_no_model_request(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(text("the answer"))
    spec = pipeline(agent("think", input="what is it?", cache={"ttl": "7d"}))
    first = await stepflow.run_pipeline(spec)
    second = await stepflow.run_pipeline(spec)

    assert first.output("think") == second.output("think") == "the answer"
    assert second.step("think").cached
    assert len(model_server.requests) == 1 and not model_server.unexpected


async def test_stepflow_cache_prune_from_the_command_line(cache_dir: Path) -> None:
    store = BlobStore(Settings(), "cache")
    expired = {
        "output": 1,
        "source_run": "r",
        "step": "s",
        "stored_at": "2020-01-01T00:00:00+00:00",
        "expires_at": "2020-01-02T00:00:00+00:00",
    }
    await store.put("ab12", expired)
    await store.put("cd34", {**expired, "expires_at": "2999-01-01T00:00:00+00:00"})
    size = store.path("ab12").stat().st_size
    env = process_env("127.0.0.1:1", STEPFLOW_PAYLOAD_DIR=str(cache_dir))
    done = ok(await stepflow_cli(env, "cache", "prune", "--json"))
    assert json.loads(done.stdout) == {"removed": 1, "bytes": size, "dry_run": False}
    assert not store.path("ab12").exists() and store.path("cd34").exists()


async def test_with_an_encryption_key_cached_results_are_sealed_on_disk(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    monkeypatch.setenv("STEPFLOW_ENCRYPTION_KEY", f"k1:{base64.b64encode(b'k' * 32).decode()}")
    store = BlobStore(Settings(), "cache")
    await store.put("ef56", {"output": "the secret answer"})

    assert b"secret answer" not in store.path("ef56").read_bytes()
    assert await store.get("ef56") == {"output": "the secret answer"}
