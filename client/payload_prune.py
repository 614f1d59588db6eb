"""Pruning the local payload store: what open runs still use stays, old files go.

A stored payload is needed as long as a history refers to it: an open run's
worker reads it again on replay, and `stepflow result` or `stepflow history`
read it as long as the namespace keeps the run. So a file may go once it has
not been stored for the retention (STEPFLOW_PAYLOAD_RETENTION) and no open
run, and no schedule's start arguments, refer to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.converter import PayloadCodec

from stepflow.runtime.payload_storage import (
    PayloadStoreError,
    StoredFile,
    prune_local_store,
    referenced_digests,
)

_REFERENCE_MARKER = "__temporal_external_storage_reference"
"""The SDK's mark on a reference it passed through the codec (temporalio.converter._extstore).

Today's SDK writes references as plain JSON; a later one may encrypt them too,
and then only the codec can tell which payloads a history refers to.
"""


@dataclass
class PruneReport:
    """What a prune removed (or, with `dry_run`, would remove) and what it kept."""

    directory: Path
    older_than: timedelta
    dry_run: bool
    open_runs: int = 0
    schedules: int = 0
    removed: list[StoredFile] = field(default_factory=list)
    kept_in_use: int = 0
    """Old files that an open run or a schedule refers to."""
    kept_recent: int = 0
    """Files stored within `older_than`."""

    @property
    def removed_bytes(self) -> int:
        return sum(file.size for file in self.removed)


async def open_references(client: Client) -> tuple[set[str], int, int]:
    """The digests that open runs and schedules refer to, and how many of each there are.

    Every workflow still running in the client's namespace counts (child workflows
    too, and runs of other task queues that share the store), read from its history.
    """
    codec = client.data_converter.payload_codec
    digests: set[str] = set()
    runs = 0
    async for execution in client.list_workflows('ExecutionStatus = "Running"'):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        history = await handle.fetch_history()
        where = f"run {execution.id}"
        digests |= await message_digests(History(events=history.events), codec, where)
        runs += 1
    schedules = 0
    async for entry in await client.list_schedules():
        # A schedule keeps the arguments of the runs it starts, stored ones as references.
        description = await client.get_schedule_handle(entry.id).describe()
        where = f"schedule {entry.id}"
        digests |= await message_digests(description.raw_description, codec, where)
        schedules += 1
    return digests, runs, schedules


async def message_digests(message: Message, codec: PayloadCodec | None, where: str) -> set[str]:
    """The stored payloads a history (or any message) refers to, encoded references included.

    Raises:
        PayloadStoreError: an encoded reference this process cannot decode (a key it
            lacks): nothing can be pruned safely.
    """
    digests = referenced_digests(message.SerializeToString())
    for payload in _payloads(message):
        if payload.metadata.get(_REFERENCE_MARKER) != b"true":
            continue
        encoded = Payload()
        encoded.CopyFrom(payload)
        del encoded.metadata[_REFERENCE_MARKER]
        del encoded.external_payloads[:]
        try:
            [reference] = await codec.decode([encoded]) if codec else [encoded]
        except Exception as err:
            raise PayloadStoreError(
                f"cannot read a stored payload's reference in {where} ({err}): nothing was "
                "removed; prune with the workers' STEPFLOW_ENCRYPTION_KEY"
            ) from err
        digests |= referenced_digests(reference.SerializeToString())
    return digests


def _payloads(message: Message) -> Iterator[Payload]:
    """Every `Payload` in a protobuf message, however deep."""
    if isinstance(message, Payload):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            values = list(value.values())
        elif isinstance(value, Message):
            values = [value]
        else:  # a repeated field
            values = list(value)
        for item in values:
            if isinstance(item, Message):
                yield from _payloads(item)


async def prune_payloads(
    client: Client, directory: Path, older_than: timedelta, *, dry_run: bool = False
) -> PruneReport:
    """Remove the files of the local store at `directory` that nothing open needs.

    A file goes when it was last stored more than `older_than` ago and no open
    run or schedule of the client's namespace refers to it. The age is taken
    before the histories are read: a payload stored meanwhile is newer, and so kept.

    Raises:
        PayloadStoreError: a reference that cannot be read; then nothing is removed.
    """
    cutoff = time.time() - older_than.total_seconds()
    report = PruneReport(directory=directory, older_than=older_than, dry_run=dry_run)
    keep, report.open_runs, report.schedules = await open_references(client)
    report.removed, report.kept_in_use, report.kept_recent = prune_local_store(
        directory, cutoff, keep, dry_run=dry_run
    )
    return report
