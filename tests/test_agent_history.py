"""An agent's history grows with its turns, not their square: each model call names the
conversation a worker stored for the call before, and carries only what came since.

A 200-turn agent whose tool results are 8 KB each (a conversation of about 1.6 MB, past
the 1.5 MB a model call could once carry) completes; its runs' histories together stay
under 3x the final conversation, and the store holds each message once. The scripted
model server sees the whole conversation at every call, as a real model would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.api.history.v1 import History
from temporalio.client import Client

from stepflow.client.api import StepflowClient
from stepflow.runtime.blob_store import BlobStore
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import PipelineStatus
from tests.support.helpers import agent, pipeline
from tests.support.model_server import ScriptedModelServer, text, tool_calls

TURNS = 200
RESULT_BYTES = 8_000


@pytest.fixture(autouse=True)
def payload_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "payloads"
    monkeypatch.setenv("STEPFLOW_PAYLOAD_DIR", str(directory))
    return directory


async def chain_bytes(client: Client, workflow_id: str) -> list[int]:
    """The size of each run's history in the chain of `workflow_id`, first to latest."""
    handle = client.get_workflow_handle(workflow_id)
    first = (await handle.fetch_history()).events[0]
    run_id: str | None = first.workflow_execution_started_event_attributes.first_execution_run_id
    sizes = []
    while run_id:
        events = (
            await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        ).events
        sizes.append(History(events=events).ByteSize())
        last = events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.HasField("workflow_execution_continued_as_new_event_attributes")
            else None
        )
    return sizes


@pytest.mark.deadline(400)
async def test_a_200_turn_agent_keeps_its_history_linear(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    journal: str,
    payload_dir: Path,
    temporal_client: Client,
) -> None:
    model_server.play(
        *[
            tool_calls(("big_text", {"journal": journal, "size": RESULT_BYTES, "seed": str(n)}))
            for n in range(1, TURNS)
        ],
        text("read it all"),
    )
    spec = pipeline(agent("reader", tools=["big_text"], input="read them", max_model_calls=TURNS))
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("reader") == "read it all"
    requests = model_server.requests
    assert len(requests) == TURNS and not model_server.unexpected
    # Every call saw the whole conversation: system, user, then a call and its result each.
    final = requests[-1].messages
    assert len(final) == 2 + 2 * (TURNS - 1)
    conversation = len(json.dumps(final).encode())
    assert conversation > 1_500_000

    agent_runs = await chain_bytes(temporal_client, f"{run.workflow_id}/reader")
    pipeline_runs = await chain_bytes(temporal_client, run.workflow_id)
    total = sum(agent_runs) + sum(pipeline_runs)
    print(
        f"\n{TURNS} turns: conversation {conversation:,} bytes; history {total:,} bytes "
        f"({total / conversation:.2f}x) in {len(agent_runs)} agent run(s)"
    )
    assert total < 3 * conversation

    # The store holds each message once: its chunks add up to the conversation, no more.
    store = BlobStore(Settings(), "conversations")
    chunks = [store.unseal(path.read_bytes()) for path in store.local_files()]
    assert chunks
    stored = sum(len(json.dumps(c["messages"]).encode()) for c in chunks)
    assert stored < 1.1 * conversation, (stored, conversation)


async def test_max_conversation_bytes_fails_the_step_before_the_call_that_would_pass_it(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        *[
            tool_calls(("big_text", {"journal": journal, "size": RESULT_BYTES, "seed": str(n)}))
            for n in range(1, 4)
        ],
        text("never"),
    )
    spec = pipeline(
        agent(
            "reader",
            tools=["big_text"],
            input="read them",
            max_conversation_bytes=20_000,
            model_retry={"max_attempts": 1},
        )
    )
    result = await stepflow.run_pipeline(spec)

    reader = result.step("reader")
    assert reader.error_type == "ConversationTooLarge", reader.error
    assert "over the 20,000 this step allows" in (reader.error or "")
    assert len(model_server.requests) == 3  # the fourth call was never made
