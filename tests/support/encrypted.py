"""What the encryption tests share: keys, private content to look for, an encrypted worker."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHistory

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.codec_server import CodecServer, build_codec_server
from stepflow.runtime.payload_storage import stepflow_data_converter
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.models import PipelineSpec
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, text, tool_calls

OLD_KEY = base64.b64encode(b"o" * 32).decode()
NEW_KEY = base64.b64encode(b"n" * 32).decode()
TOKEN = "codec-token-0123456789abcdef"

# Each piece of private content carries a marker, so a leak says where it came from.
DESCRIPTION = "MARK-DESCRIPTION-memo-4b1c"
TOPIC = "MARK-INPUT-topic-9d2e"
PROMPT = "MARK-PROMPT-instructions-51aa"
TOOL_ARGUMENT = "MARK-TOOL-ARGUMENT-model-asked-77c0"
MODEL_OUTPUT = "MARK-MODEL-OUTPUT-reply-3e8f"
STEP_ARGUMENT = "MARK-STEP-ARGUMENT-tool-step-c5d1"
LARGE = "MARK-LARGE-stored-output-0af3"
ERROR = "MARK-ERROR-message-e61b"
MARKERS = [
    DESCRIPTION,
    TOPIC,
    PROMPT,
    TOOL_ARGUMENT,
    MODEL_OUTPUT,
    STEP_ARGUMENT,
    LARGE,
    ERROR,
]
THRESHOLD = 4096
"""The payload store's threshold in these tests: the large output is 5 KB."""


def private_pipeline() -> PipelineSpec:
    """Every kind of private content, then a step that fails with a private message."""
    return pipeline(
        step("note", "echo", args={"value": f"{STEP_ARGUMENT} about {{{{ inputs.topic }}}}"}),
        step("large", "echo", args={"value": LARGE + "x" * (THRESHOLD + 1000)}),
        agent(
            "research",
            f"{PROMPT}. Research the topic with echo.",
            tools=["echo"],
            input={"topic": "{{ inputs.topic }}"},
        ),
        step(
            "publish",
            "fail",
            args={"message": ERROR, "non_retryable": True},
            depends_on=["note", "large", "research"],
        ),
        name="private",
        description=DESCRIPTION,
        inputs={"topic": {"type": "string"}},
    )


def script_agent(model_server: ScriptedModelServer) -> None:
    model_server.play(
        tool_calls(("echo", {"value": TOOL_ARGUMENT})),
        text(MODEL_OUTPUT),
    )


def raw_bytes(*histories: WorkflowHistory) -> bytes:
    """Histories as the server keeps them: binary protobuf holds payload bytes as they are."""
    return b"".join(event.SerializeToString() for h in histories for event in h.events)


def leaked(data: bytes) -> list[str]:
    return [marker for marker in MARKERS if marker.encode() in data]


def shown(history_json: str) -> bytes:
    """Every string of `temporal workflow show -o json`, payload data base64-decoded."""
    found: list[bytes] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    found.append(base64.b64decode(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            found.append(node.encode())

    walk(json.loads(history_json))
    return b"\n".join(found)


@dataclass
class Encrypted:
    """A worker and a client that share keys and a payload store."""

    stepflow: StepflowClient
    settings: Settings
    store: Path


EncryptedWorker = Callable[[str], AbstractAsyncContextManager[Encrypted]]


def encrypted_worker(
    temporal_client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> EncryptedWorker:
    """`async with encrypted_worker(...)(KEYS) as run:` a worker and a client with these keys.

    The test's settings (its task queue, the test tools) with STEPFLOW_ENCRYPTION_KEY=KEYS,
    and a payload store in `tmp_path` that keeps payloads from THRESHOLD bytes.
    """

    @asynccontextmanager
    async def start(keys: str) -> AsyncIterator[Encrypted]:
        store = tmp_path / "payloads"
        monkeypatch.setenv("STEPFLOW_ENCRYPTION_KEY", keys)
        monkeypatch.setenv("STEPFLOW_PAYLOAD_DIR", str(store))
        monkeypatch.setenv("STEPFLOW_PAYLOAD_THRESHOLD_BYTES", str(THRESHOLD))
        configured = Settings()
        client = client_for(temporal_client, configured)
        tools = load_tool_modules(configured.tool_modules)
        async with build_worker(client, configured, tools=tools):
            yield Encrypted(StepflowClient(client, settings=configured), configured, store)

    return start


def client_for(client: Client, settings: Settings) -> Client:
    """The same connection, with the data converter (keys, payload store) of `settings`."""
    config = client.config()
    config["data_converter"] = stepflow_data_converter(settings)
    return Client(**config)


@contextmanager
def codec_server(settings: Settings, **options: Any) -> Iterator[CodecServer]:
    """A codec server of `settings` on a free port, for the block's length."""
    server = build_codec_server(settings, port=0, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
