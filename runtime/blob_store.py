"""JSON values by key, kept beside the payload store and sealed as its payloads are.

The result cache (`activities.result_cache`) and agent conversations kept by
reference (`activities.conversation_store`) live here: a directory under the
payload store's (`<payload dir>/<area>/`), also when the payload store is off,
or a prefix of its S3 bucket (`stepflow-<area>/`). With encryption keys
configured, every value is encrypted with them (`runtime.encryption`), as
payloads are: prompts and outputs never lie on disk or in S3 in the clear.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload

from stepflow.runtime.encryption import EncryptionCodec, load_keys
from stepflow.runtime.payload_storage import payload_dir
from stepflow.runtime.settings import Settings

_JSON = b"json/plain"


class BlobStore:
    """One area's values: `get` and `put` by key (hex digests: nothing else names a file)."""

    def __init__(self, settings: Settings, area: str) -> None:
        self.area = area
        self.codec = EncryptionCodec(load_keys(settings))
        self.bucket = settings.payload_s3_bucket if settings.payload_store == "s3" else None
        self.directory = payload_dir(settings) / area
        self._session: Any = None

    # -- sealing --------------------------------------------------------------------------

    async def seal(self, value: Any) -> bytes:
        payload = Payload(metadata={"encoding": _JSON}, data=json.dumps(value).encode())
        [sealed] = await self.codec.encode([payload])
        return sealed.SerializeToString()

    def unseal(self, data: bytes) -> Any:
        """The value kept; raises `EncryptionError` without its key, ValueError if unreadable."""
        payload = self.codec.decrypt(Payload.FromString(data))
        return json.loads(payload.data)

    # -- where it lives -------------------------------------------------------------------

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def _s3(self) -> Any:
        if self._session is None:
            import aioboto3  # type: ignore[import-not-found,unused-ignore]

            self._session = aioboto3.Session()
        return self._session

    async def get(self, key: str) -> Any | None:
        """The value under `key`, or None if there is none."""
        if self.bucket:
            async with self._s3().client("s3") as s3:
                try:
                    response = await s3.get_object(
                        Bucket=self.bucket, Key=f"stepflow-{self.area}/{key}"
                    )
                except s3.exceptions.NoSuchKey:
                    return None
                data: bytes = await response["Body"].read()
        else:
            path = self.path(key)
            found = await asyncio.to_thread(lambda: path.read_bytes() if path.exists() else None)
            if found is None:
                return None
            data = found
        return self.unseal(data)

    async def put(self, key: str, value: Any) -> None:
        data = await self.seal(value)
        if self.bucket:
            async with self._s3().client("s3") as s3:
                await s3.put_object(
                    Bucket=self.bucket, Key=f"stepflow-{self.area}/{key}", Body=data
                )
            return
        await asyncio.to_thread(_write_atomically, self.path(key), data)

    def local_files(self) -> Iterator[Path]:
        """The local area's files (for pruning); S3 prefixes expire by a lifecycle rule."""
        if self.directory.exists():
            yield from sorted(p for p in self.directory.glob("*/*") if not p.name.endswith(".tmp"))


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f"{path.name}.{os.getpid()}.{id(data)}.tmp")
    scratch.write_bytes(data)
    scratch.replace(path)
