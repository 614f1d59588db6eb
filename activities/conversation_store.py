"""Agent conversations kept by reference, so history grows with the turns, not their square.

Each model call used to carry the whole conversation, so a 200-turn agent wrote
its early messages into history 200 times. Now a call carries only the
messages added since the last call, and `prior`: the key of the conversation
before them, which the call before stored here as a chain of chunks, each
`{"prev": key, "messages": [...]}` under the SHA-256 of its JSON. Every message
is stored once; a call reads the chain back (from this process's memory when
the same worker stored it) and stores its own chunk before it returns, so the
next call can name it. Chunks live beside the payload store and are encrypted
as payloads are (`runtime.blob_store`).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

from stepflow.runtime.blob_store import BlobStore
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import ChatMessage

MEMORY_BYTES = 64 * 1024 * 1024
"""Chunks a worker keeps in memory (the newest first): reading a chain back then costs one
read per chunk another worker stored."""


class ConversationMissing(LookupError):
    """A chunk the call names is not in the store (another machine's local store?)."""


def chunk_key(prev: str | None, messages: list[ChatMessage]) -> str:
    canonical = json.dumps(
        {"prev": prev, "messages": messages}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ConversationStore:
    """The chain of an agent step's conversation, chunk by chunk."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.payload_store != "off"
        self.blobs = BlobStore(settings, "conversations")
        self._memory: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._bytes = 0

    async def load(self, key: str) -> list[ChatMessage]:
        """The whole conversation the chain ending at `key` holds, first message first."""
        chunks: list[list[ChatMessage]] = []
        at: str | None = key
        while at is not None:
            chunk = await self._chunk(at)
            chunks.append(chunk["messages"])
            at = chunk["prev"]
        return [message for chunk in reversed(chunks) for message in chunk]

    async def save(self, prev: str | None, messages: list[ChatMessage]) -> str:
        """Store `messages` after the chain `prev`; the key of the longer chain."""
        key = chunk_key(prev, messages)
        if key not in self._memory:
            chunk = {"prev": prev, "messages": messages}
            await self.blobs.put(key, chunk)  # the same key on a retry: stored once
            self._remember(key, chunk)
        return key

    async def _chunk(self, key: str) -> dict[str, Any]:
        kept = self._memory.get(key)
        if kept is not None:
            self._memory.move_to_end(key)
            return kept[0]
        found = await self.blobs.get(key)
        if found is None:
            raise ConversationMissing(
                f"conversation chunk {key[:12]}... is not in {self.blobs.directory}: workers "
                "that share agent steps must share the payload store (STEPFLOW_PAYLOAD_DIR on "
                "a shared disk, or STEPFLOW_PAYLOAD_STORE=s3)"
            )
        self._remember(key, found)
        return dict(found)

    def _remember(self, key: str, chunk: dict[str, Any]) -> None:
        size = len(json.dumps(chunk["messages"]))
        self._memory[key] = (chunk, size)
        self._bytes += size
        while self._bytes > MEMORY_BYTES and len(self._memory) > 1:
            _, (_, dropped) = self._memory.popitem(last=False)
            self._bytes -= dropped
