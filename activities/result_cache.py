"""The result cache: steps' outputs kept across runs, in the payload store's place.

An entry is named by the hash of what determines a step's result
(`workflows.steps.cache` sends that material; the worker adds what only it
knows: a tool's `version`, the default model). Entries live beside the payload
store (`runtime.blob_store`): `<payload dir>/cache/` for the local store (and with
the store off), the `stepflow-cache/` prefix of the bucket for S3, encrypted when
payloads are. Only the hash names an entry, so nothing of the arguments (or a
secret among them) is in a file name.

A cache that cannot be read or written is a miss, never a failed step: the
activities log it and go on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from temporalio import activity

from stepflow.activities.registry import get_tool
from stepflow.runtime.blob_store import BlobStore
from stepflow.runtime.settings import Settings, get_settings
from stepflow.workflows.models import (
    CACHE_LOOKUP_ACTIVITY,
    CACHE_STORE_ACTIVITY,
    CacheAnswer,
    CacheLookup,
    CacheStore,
)

log = structlog.get_logger("stepflow.cache")


def cache_key(kind: str, material: dict[str, Any], settings: Settings) -> str:
    """The entry's name: a SHA-256 of the step's material and what the worker adds to it."""
    extra: dict[str, Any] = {}
    if kind == "tool":
        definition = get_tool(str(material.get("tool")))
        extra["version"] = getattr(definition, "version", None) if definition else None
    elif kind == "agent" and material.get("model") is None:
        extra["model"] = settings.default_model  # the model that will answer
    canonical = json.dumps(
        {"kind": kind, **material, **extra}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Entry:
    output: Any
    source_run: str
    step: str
    stored_at: datetime
    expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "source_run": self.source_run,
            "step": self.step,
            "stored_at": self.stored_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Entry:
        return cls(
            output=raw["output"],
            source_run=raw["source_run"],
            step=raw.get("step", ""),
            stored_at=datetime.fromisoformat(raw["stored_at"]),
            expires_at=datetime.fromisoformat(raw["expires_at"]),
        )


def cache_store(settings: Settings) -> BlobStore:
    """Where entries live: beside the payload store, sealed as its payloads are."""
    return BlobStore(settings, "cache")


def cache_directory(settings: Settings) -> Path:
    return cache_store(settings).directory


class CacheActivities:
    """`stepflow_cache_lookup` and `stepflow_cache_store`, over the worker's cache storage."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.storage = cache_store(self.settings)

    def _count(self, outcome: str) -> None:
        activity.metric_meter().create_counter(
            "stepflow_cache_lookups", "Result cache lookups, by outcome (hit, miss)."
        ).add(1, {"outcome": outcome})

    @activity.defn(name=CACHE_LOOKUP_ACTIVITY)
    async def lookup(self, request: CacheLookup) -> CacheAnswer:
        key = cache_key(request.kind, request.material, self.settings)
        if request.refresh:
            log.info("cache_refresh", step_id=request.step_id)
            return CacheAnswer(key=key, hit=False)
        try:
            raw = await self.storage.get(key)
            entry = Entry.from_json(raw) if raw is not None else None
        except Exception as err:  # an unreadable cache is a miss, never a failed step
            log.warning("cache_unreadable", step_id=request.step_id, error=type(err).__name__)
            entry = None
        now = datetime.now(UTC)
        if entry is None or entry.stored_at + request.ttl <= now:
            self._count("miss")
            log.info("cache_miss", step_id=request.step_id)
            return CacheAnswer(key=key, hit=False)
        self._count("hit")
        log.info("cache_hit", step_id=request.step_id, source_run=entry.source_run)
        return CacheAnswer(
            key=key,
            hit=True,
            output=entry.output,
            source_run=entry.source_run,
            stored_at=entry.stored_at,
        )

    @activity.defn(name=CACHE_STORE_ACTIVITY)
    async def store(self, request: CacheStore) -> None:
        now = datetime.now(UTC)
        entry = Entry(request.output, request.source_run, request.step_id, now, now + request.ttl)
        try:
            await self.storage.put(request.key, entry.to_json())
        except Exception as err:  # the result stands; only the next run pays again
            log.warning("cache_unwritable", step_id=request.step_id, error=type(err).__name__)

    def activities(self) -> list[Any]:
        return [self.lookup, self.store]


def prune_cache(settings: Settings, *, dry_run: bool = False) -> tuple[int, int]:
    """Remove expired entries from the local cache: (entries removed, bytes freed).

    An S3 cache is pruned by a bucket lifecycle rule on `stepflow-cache/` instead.
    """
    now = datetime.now(UTC)
    removed = freed = 0
    store = cache_store(settings)
    for path in store.local_files():
        try:
            entry = Entry.from_json(store.unseal(path.read_bytes()))
        except Exception:  # being written, sealed with a key this process lacks, not ours
            continue
        if entry.expires_at <= now:
            size = path.stat().st_size
            if not dry_run:
                path.unlink(missing_ok=True)
            removed += 1
            freed += size
    return removed, freed


__all__ = ["CacheActivities", "cache_key", "prune_cache"]
