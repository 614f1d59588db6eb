"""Stepflow's data converter: pydantic values, large payloads kept outside history.

Temporal refuses any payload over 2 MB, and a history near 50 MB is
terminated. So every payload of at least `STEPFLOW_PAYLOAD_THRESHOLD_BYTES`
(a step's output, a tool's result, a pipeline's result...) goes to a payload
store through the SDK's external storage (claim check), and history keeps a
small reference to it. The store is a local directory by default, or an S3
bucket; the worker and every client must use the same one, since clients read
results that may have been stored.

A worker that cannot store a value never retries forever: in an activity, a
result that the store refuses for good (access denied, no such bucket, a full
disk), or that is over Temporal's limit with the store off, fails the activity
at once with a non-retryable error that says what was too large and what to
do. A store that fails for now (an S3 503 or throttling, a dropped connection,
a timeout) fails the attempt with a retryable error, and the step's retry
policy runs the call again (`store_error_is_transient` draws the line).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.contrib.aws.s3driver import S3StorageDriver, S3StorageDriverClient
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverSelectContext,
    StorageDriverStoreContext,
)

from stepflow.runtime.converter import StepflowPayloadConverter
from stepflow.runtime.encryption import EncryptionCodec, load_keys
from stepflow.runtime.settings import Settings
from stepflow.workflows.errors import ErrorType

TEMPORAL_PAYLOAD_LIMIT = 2 * 1024 * 1024
"""The server's default `limit.blobSize.error`: a bigger payload is refused."""

INLINE_LIMIT = TEMPORAL_PAYLOAD_LIMIT - 4096
"""The largest payload left in history: the server counts a little envelope too."""

OUTPUT_TOO_LARGE = ErrorType.OUTPUT_TOO_LARGE
"""Error type: a result over Temporal's limit with the payload store off."""

PAYLOAD_STORE_FAILED = ErrorType.PAYLOAD_STORE_FAILED
"""Error type: a result over the threshold that the payload store refused for good."""

PAYLOAD_STORE_UNAVAILABLE = ErrorType.PAYLOAD_STORE_UNAVAILABLE
"""Error type: a result the payload store could not keep for now; the call is retried."""

LOCAL_DRIVER_NAME = "stepflow.local"
_KEY = re.compile(r"sha256/([0-9a-f]{64})")


class PayloadStoreError(RuntimeError):
    """The payload store is misconfigured, or could not store or read a payload."""


def payload_dir(settings: Settings) -> Path:
    """The local store's directory, made absolute (a worker may chdir; a reader may not)."""
    return (settings.payload_dir or settings.home / "payloads").expanduser().absolute()


def describe_store(settings: Settings) -> str:
    """One line for logs and errors: where large payloads go (never a credential)."""
    if settings.payload_store == "off":
        return "off (payloads over 2 MB fail their step)"
    threshold = f"payloads from {settings.payload_threshold_bytes:,} bytes"
    if settings.payload_store == "s3":
        return f"{threshold} in s3://{settings.payload_s3_bucket}"
    return f"{threshold} in {payload_dir(settings)}"


def stepflow_data_converter(settings: Settings) -> DataConverter:
    """The data converter of every Stepflow worker and client, from the settings.

    Pydantic models as JSON; payloads of at least `payload_threshold_bytes` in
    the configured store; with the store off, a result over Temporal's limit
    fails its activity at once. With encryption keys configured, every payload
    is encrypted (`runtime.encryption`), stored ones included, and failure
    messages and stack traces move into an encrypted attribute.

    Raises:
        PayloadStoreError: `s3` without a bucket or without the `s3` extra installed.
        EncryptionError: a key file that has become unreadable or bad since the settings
            were read.
    """
    directory = payload_dir(settings)
    local = _GuardedDriver(
        LocalPayloadDriver(directory),
        describe_store(settings) if settings.payload_store == "local" else str(directory),
        f"{directory} (STEPFLOW_PAYLOAD_DIR) must be a directory the worker can write",
    )
    if settings.payload_store == "off":
        refuse = _RefuseDriver()

        def select(_context: StorageDriverSelectContext, _payload: Payload) -> StorageDriver | None:
            # Only activities can fail at once. A workflow task's payload stays inline:
            # the SDK refuses it and the task is retried, as without this driver.
            return refuse if activity.in_activity() else None

        storage = ExternalStorage(
            # The local store still reads what it kept before the store was turned off.
            drivers=[refuse, local],
            driver_selector=select,
            payload_size_threshold=INLINE_LIMIT + 1,
        )
    else:
        # Runs in flight hold references into whichever store kept them: a reader
        # knows every store it can reach, so switching stores never strands a run.
        readers: list[StorageDriver] = [local]
        writer: StorageDriver = local
        if settings.payload_store == "s3" or settings.payload_s3_bucket:
            s3 = _GuardedDriver(
                _s3_driver(settings),
                describe_store(settings),
                "the bucket must exist, and the worker's AWS credentials allow s3:PutObject, "
                "s3:GetObject and s3:ListBucket on it",
            )
            readers.append(s3)
            if settings.payload_store == "s3":
                writer = s3

        def write_to(_context: StorageDriverSelectContext, _payload: Payload) -> StorageDriver:
            return writer

        storage = ExternalStorage(
            drivers=readers,
            driver_selector=write_to,
            payload_size_threshold=settings.payload_threshold_bytes,
        )
    keys = load_keys(settings)
    return DataConverter(
        # Pydantic models as JSON, the encoders shared by the SDK's many copies of this.
        payload_converter_class=StepflowPayloadConverter,
        external_storage=storage,
        # The SDK encodes a payload before the store keeps it: stored payloads are encrypted too.
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=(
            DefaultFailureConverterWithEncodedAttributes if keys else DefaultFailureConverter
        ),
    )


class LocalPayloadDriver(StorageDriver):
    """Payloads as files under one directory, named by the SHA-256 of their bytes.

    `<dir>/sha256/<first two hex digits>/<digest>`: the same bytes stored twice
    are one file, a name never comes from user input, and a file is written to
    a temporary name, flushed to disk and renamed, so a reader never sees half
    of one. A file read back is checked against its digest. Storing an existing
    one again refreshes its time: `stepflow payloads prune` (`prune_local_store`)
    removes files not stored for STEPFLOW_PAYLOAD_RETENTION that no open run
    refers to.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def name(self) -> str:
        return LOCAL_DRIVER_NAME

    def type(self) -> str:
        return "stepflow.local"

    def _path(self, digest: str) -> Path:
        return self.directory / "sha256" / digest[:2] / digest

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        return await asyncio.to_thread(self._store_all, payloads)

    def _store_all(self, payloads: Sequence[Payload]) -> list[StorageDriverClaim]:
        claims = []
        for payload in payloads:
            data = payload.SerializeToString()
            digest = hashlib.sha256(data).hexdigest()
            path = self._path(digest)
            try:
                os.utime(path)  # pruning goes by this time: the file is in use again
            except FileNotFoundError:  # new, or pruned a moment ago
                _write_atomically(path, data)
            except OSError:
                if not path.is_file():  # e.g. the store's directory is a file
                    raise
                # Kept, but its time not refreshed (someone else's file): worth no failure.
            claims.append(StorageDriverClaim(claim_data={"key": f"sha256/{digest}"}))
        return claims

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return await asyncio.to_thread(self._retrieve_all, claims)

    def _retrieve_all(self, claims: Sequence[StorageDriverClaim]) -> list[Payload]:
        payloads = []
        for claim in claims:
            key = claim.claim_data.get("key", "")
            match = _KEY.fullmatch(key)
            if match is None:  # a reference is data from history: never a path to follow
                raise PayloadStoreError(f"malformed local payload reference {key!r}")
            digest = match.group(1)
            path = self._path(digest)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise PayloadStoreError(
                    f"payload {key} is not in the local payload store {self.directory}: "
                    "the worker and this process must use the same store "
                    "(STEPFLOW_PAYLOAD_DIR, or STEPFLOW_HOME, as an absolute path; "
                    "a store shared by several machines must be S3 or a shared mount)"
                ) from None
            if hashlib.sha256(data).hexdigest() != digest:
                raise PayloadStoreError(f"payload file {path} is damaged: its digest differs")
            payload = Payload()
            payload.ParseFromString(data)
            payloads.append(payload)
        return payloads


REFERENCE = re.compile(rb"sha256/([0-9a-f]{64})")
"""A local store reference as history holds it (`{"claimData": {"key": "sha256/<digest>"}}`)."""


def referenced_digests(data: bytes) -> set[str]:
    """The digests of the stored payloads that serialized history (or any bytes) refers to."""
    return {match.decode() for match in REFERENCE.findall(data)}


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """One file of the local store."""

    path: Path
    digest: str | None
    """None for a temporary file a crashed write (or prune) left behind."""
    size: int
    modified: float
    """When it was last stored (seconds since the epoch)."""


def stored_files(directory: Path) -> list[StoredFile]:
    """Every payload file of a local store, and leftover temporary files."""
    files = []
    for path in sorted((directory / "sha256").glob("??/*")):
        digest = _KEY.fullmatch(f"sha256/{path.name}")
        if digest is None and not path.name.startswith((".tmp-", ".prune-")):
            continue  # not ours: left alone
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        files.append(StoredFile(path, digest and digest.group(1), stat.st_size, stat.st_mtime))
    return files


def prune_local_store(
    directory: Path, older_than: float, keep: set[str], *, dry_run: bool = False
) -> tuple[list[StoredFile], int, int]:
    """Remove files last stored before `older_than` whose digest is not in `keep`.

    A worker may store the same bytes again while this runs, which refreshes the
    file's time; a file is moved aside before it is removed, and put back if its
    time changed meanwhile, so a payload in use is never lost.

    Args:
        directory: The local store.
        older_than: Seconds since the epoch: only files last stored before it go.
        keep: Digests that open runs refer to.
        dry_run: Remove nothing; report what would go.

    Returns:
        The files removed (or that would be), and how many were kept because a
        run refers to them and because they are newer.
    """
    removed: list[StoredFile] = []
    referenced = recent = 0
    for file in stored_files(directory):
        if file.modified >= older_than:
            recent += 1
        elif file.digest is not None and file.digest in keep:
            referenced += 1
        elif dry_run or _remove_unless_refreshed(file.path, older_than):
            removed.append(file)
        else:
            recent += 1
    return removed, referenced, recent


def _remove_unless_refreshed(path: Path, older_than: float) -> bool:
    aside = path.with_name(f".prune-{path.name}")
    try:
        # After the rename a worker storing these bytes finds no file and writes it anew;
        # one that refreshed it just before left its time on the file moved aside.
        os.replace(path, aside)
    except FileNotFoundError:
        return False
    if aside.stat().st_mtime >= older_than:
        os.replace(aside, path)  # in use again (a new copy, if any, has the same bytes)
        return False
    aside.unlink()
    return True


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # History will point at this file: make its name as durable as its bytes.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class _GuardedDriver(StorageDriver):
    """A store whose failures say what was being stored and what to do.

    In an activity, a store that refused the value for good fails the call at
    once (`PayloadStoreFailed`): the same result would fail to store again on
    every retry. A store that failed for now (`PayloadStoreUnavailable`, see
    `store_error_is_transient`) fails the attempt, and the step's retry policy
    runs the call again; a retry runs the tool again, since its result was never
    kept. In a workflow task any failure fails the task, which Temporal retries
    until the store works again, so the run is not lost.
    """

    def __init__(self, inner: StorageDriver, where: str, fix: str) -> None:
        self.inner = inner
        self.where = where
        self.fix = fix

    def name(self) -> str:
        return self.inner.name()  # references name the store, not this wrapper

    def type(self) -> str:
        return self.inner.type()

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        try:
            return await self.inner.store(context, payloads)
        except Exception as err:
            size = sum(p.ByteSize() for p in payloads)
            reason = _reason(err)
            if activity.in_activity():
                info = activity.info()
                what = (
                    f"the result of {_what(info.activity_type)} is {size:,} bytes, so it goes to "
                    f"the payload store ({self.where})"
                )
                if store_error_is_transient(err):
                    raise PAYLOAD_STORE_UNAVAILABLE.error(
                        f"{what}, which could not keep it for now: {reason}. The call is "
                        f"retried; if this goes on, check the store ({self.fix}).",
                        {"attempt": info.attempt},
                    ) from err
                raise PAYLOAD_STORE_FAILED.error(
                    f"{what}, which could not keep it: {reason}. Fix the store ({self.fix}), "
                    "or return a smaller value: write large data to a file and return its path.",
                    {"attempt": info.attempt},
                ) from err
            raise PayloadStoreError(
                f"the payload store ({self.where}) could not keep a {size:,}-byte payload: "
                f"{reason}; the workflow task is retried until the store works"
            ) from err

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        try:
            return await self.inner.retrieve(context, claims)
        except PayloadStoreError:
            raise
        except Exception as err:
            raise PayloadStoreError(
                f"the payload store ({self.where}) could not read a stored payload: {_reason(err)}"
            ) from err


class _RefuseDriver(StorageDriver):
    """The store when it is off: a result over Temporal's limit fails its activity at once.

    Without it the SDK refuses the result as `PayloadsTooLarge`, a retryable
    failure, and the activity is retried (by default forever), making the same
    result each time.
    """

    def name(self) -> str:
        return "stepflow.off"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        size = sum(p.ByteSize() for p in payloads)
        info = activity.info()
        raise OUTPUT_TOO_LARGE.error(
            f"the result of {_what(info.activity_type)} is {size:,} bytes, over Temporal's "
            f"{TEMPORAL_PAYLOAD_LIMIT:,}-byte payload limit, and the payload store is off "
            "(STEPFLOW_PAYLOAD_STORE=off). Turn it on (STEPFLOW_PAYLOAD_STORE=local or s3, on "
            "the worker and the clients), or return a smaller value: write large data to a "
            "file and return its path.",
            {"attempt": info.attempt},
        )

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        raise PayloadStoreError("no payload is ever stored with the payload store off")


_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "OperationAborted",  # "a conflicting conditional operation is in progress: try again"
    }
)
"""S3 error codes that say "not now" rather than "no"; any 5xx, 408 and 429 count too."""

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ESTALE,  # a network mount's handle went stale; reopening works
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EMFILE,
        errno.ENFILE,
    }
)
"""OS errors of a store that may pass: a busy or network-mounted directory, a full file table.

A full disk (ENOSPC, EDQUOT) is not among them: it needs someone to free space or
prune the store (`stepflow payloads prune`), which no retry policy waits for, and every
retry would run the tool again. Permissions, a read-only file system and a path that is
not a directory are permanent too.
"""


def store_error_is_transient(err: BaseException) -> bool:
    """Whether another attempt may store what this error kept from being stored.

    Looks through the error and what caused it (the SDK's S3 driver wraps botocore's
    error in its own): an S3 answer of 5xx, 408, 429 or a throttling code, a connection
    that failed or dropped, a timeout, or a passing OS error is transient; anything else
    (access denied, no such bucket, bad credentials, a full disk) is not.
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        verdict = _verdict(cause)
        if verdict is not None:
            return verdict
        cause = cause.__cause__ or cause.__context__
    return False


def _verdict(err: BaseException) -> bool | None:
    """True: transient, False: permanent, None: this error does not say (look at its cause)."""
    verdict = _botocore_verdict(err)
    if verdict is not None:
        return verdict
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in _TRANSIENT_ERRNOS
    return None


def _botocore_verdict(err: BaseException) -> bool | None:
    try:
        from botocore import exceptions as boto  # the `s3` extra
    except ImportError:  # the local store only: no botocore error can occur
        return None
    if isinstance(err, boto.ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if not status and code.isdigit():  # a HEAD's error has no body, only its status
            status = int(code)
        return code in _TRANSIENT_S3_CODES or status >= 500 or status in (408, 429)
    if isinstance(err, boto.SSLError):
        return False  # a certificate or TLS setting to fix
    if isinstance(err, boto.ConnectionError | boto.HTTPClientError):
        return True  # refused, dropped, timed out: botocore's own connection errors
    if isinstance(err, boto.BotoCoreError):
        return False  # no credentials, a bad configuration...
    return None


def _reason(err: BaseException) -> str:
    """The error and what caused it: the SDK's S3 driver wraps botocore's own words."""
    reason = f"{type(err).__name__}: {err}"
    cause = err.__cause__
    if cause is not None and str(cause) not in reason:
        reason += f" ({type(cause).__name__}: {cause})"
    return reason


def _what(activity_type: str) -> str:
    """`tool_fetch` -> "tool 'fetch'": what the user wrote in the pipeline."""
    if activity_type.startswith("tool_"):
        return f"tool {activity_type.removeprefix('tool_')!r}"
    if activity_type == "model_call":
        return "a model call"
    return f"activity {activity_type!r}"


# -- S3 ------------------------------------------------------------------------------------


def _s3_driver(settings: Settings) -> StorageDriver:
    """The SDK's S3 driver over aioboto3; region, credentials and endpoint come from AWS_*."""
    if not settings.payload_s3_bucket:
        raise PayloadStoreError(
            "STEPFLOW_PAYLOAD_STORE=s3 needs STEPFLOW_PAYLOAD_S3_BUCKET (an existing bucket)"
        )
    try:
        import aioboto3  # type: ignore[import-not-found,unused-ignore]
        from temporalio.contrib.aws.s3driver.aioboto3 import new_aioboto3_client
    except ImportError as err:
        raise PayloadStoreError(
            f"STEPFLOW_PAYLOAD_STORE=s3 needs the s3 extra: pip install 'stepflow[s3]' ({err})"
        ) from err
    return S3StorageDriver(
        client=_S3Client(aioboto3.Session(), new_aioboto3_client),
        bucket=settings.payload_s3_bucket,
        # Not the SDK's 50 MiB: a run's result may gather several large outputs, and a
        # payload the store refuses in a workflow task would fail that task forever. The
        # worker's memory is the real bound, as with the local store; S3 takes 5 GB per put.
        max_payload_size=5 * 1024**3,
    )


class _S3Client(S3StorageDriverClient):
    """The SDK's aioboto3 adapter, with an aioboto3 client per operation.

    aioboto3's clients are async context managers tied to one event loop, and
    the data converter is built before any loop runs; a client per call (only
    payloads over the threshold make one) needs nothing opened at start or
    closed at exit.
    """

    def __init__(self, session: Any, adapter: Callable[[Any], S3StorageDriverClient]) -> None:
        self._session = session
        self._adapter = adapter

    def describe(self) -> Mapping[str, str]:
        region = self._session.region_name
        return {"client_region": region} if region else {}

    async def put_object(self, *, bucket: str, key: str, data: bytes) -> None:
        async with self._session.client("s3") as s3:
            await self._adapter(s3).put_object(bucket=bucket, key=key, data=data)

    async def object_exists(self, *, bucket: str, key: str) -> bool:
        async with self._session.client("s3") as s3:
            return await self._adapter(s3).object_exists(bucket=bucket, key=key)

    async def get_object(self, *, bucket: str, key: str) -> bytes:
        async with self._session.client("s3") as s3:
            return await self._adapter(s3).get_object(bucket=bucket, key=key)
