"""Payload encryption: an AES-256-GCM payload codec, on when keys are configured.

Every payload the worker or a client writes (workflow and activity inputs and
results, memo, signals, updates, queries, summaries, failure details) is
encrypted before it leaves the process, and failure messages and stack traces
are moved into an encrypted attribute (`encode_common_attributes`). Payloads
kept in the payload store are encrypted too: the SDK encodes a payload before
the store keeps it, and history holds only its reference.

An encrypted payload keeps the format of Temporal's encryption samples: the
encoding `binary/encrypted`, the key's id in the metadata `encryption-key-id`,
and as data a random 12-byte nonce followed by the AES-GCM ciphertext of the
serialized payload. So a codec server written for those samples can read it.

Keys come from `STEPFLOW_ENCRYPTION_KEY` or `STEPFLOW_ENCRYPTION_KEY_FILE`:
`KEY` or `ID:KEY,ID2:KEY2`, each key the base64 of 32 random bytes. The first
key encrypts; every key decrypts the payloads that name its id, so a new key
goes first and old ones stay until no open or retained run uses them. A key
given without an id gets one from its fingerprint (`k` and 12 hex digits of a
SHA-256 over it): safe to show, and the same wherever that key is configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter, PayloadCodec

if TYPE_CHECKING:
    from stepflow.runtime.settings import Settings

ENCODING = b"binary/encrypted"
"""The encoding of an encrypted payload (as in Temporal's encryption samples)."""

KEY_ID_METADATA = "encryption-key-id"
"""The metadata entry naming the key a payload was encrypted with."""

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
"""AES-GCM's authentication tag, after the ciphertext."""
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_TEXT = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_HOW_TO_MAKE = "make one with `openssl rand -base64 32`"


class EncryptionError(RuntimeError):
    """Bad key settings, or a payload that this process cannot decrypt.

    Messages name keys by id and position, never by their bytes.
    """


@dataclass(frozen=True)
class EncryptionKey:
    """One AES-256 key and the id that payloads encrypted with it carry."""

    id: str
    secret: bytes = field(repr=False)


def key_id_of(secret: bytes) -> str:
    """The id of a key configured without one: a fingerprint, the same wherever it is used."""
    return "k" + hashlib.sha256(b"stepflow encryption key id\0" + secret).hexdigest()[:12]


def parse_keys(text: str, source: str = "") -> list[EncryptionKey]:
    """The keys of a `STEPFLOW_ENCRYPTION_KEY` value or key file, the current one first.

    Entries are separated by commas or new lines; `#` starts a comment. Each
    entry is `KEY` or `ID:KEY`, the key in base64 (standard or URL-safe alphabet).

    Args:
        text: The keys.
        source: Where they come from, to start error messages with (e.g. a file's path).

    Raises:
        EncryptionError: no key, a key that is not base64 of 32 bytes, a bad or repeated id.
    """
    where = f"{source}: " if source else ""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]  # no key or id holds a "#"
        entries += [part.strip() for part in line.split(",") if part.strip()]
    if not entries:
        raise EncryptionError(f"{where}no key ({_HOW_TO_MAKE})")
    keys: list[EncryptionKey] = []
    for number, entry in enumerate(entries, 1):
        given_id, sep, encoded = entry.rpartition(":")
        # Never echo what was given: written `KEY:ID` by mistake, the "id" is the key.
        name = f"key {number}"
        if sep and not _KEY_ID.fullmatch(given_id):
            raise EncryptionError(
                f"{where}key {number} has a bad id: write ID:KEY, the id 1 to 64 letters, "
                "digits, '.', '_' or '-'"
            )
        if sep and len(_decode_key(given_id) or b"") == KEY_BYTES:
            raise EncryptionError(
                f"{where}key {number} looks like KEY:ID: write ID:KEY ({_HOW_TO_MAKE})"
            )
        secret = _decode_key(encoded)
        if secret is None:
            raise EncryptionError(f"{where}{name} is not base64 ({_HOW_TO_MAKE})")
        if len(secret) != KEY_BYTES:
            raise EncryptionError(
                f"{where}{name} is {len(secret)} bytes; AES-256 needs {KEY_BYTES} ({_HOW_TO_MAKE})"
            )
        key_id = given_id if sep else key_id_of(secret)
        if any(key.id == key_id for key in keys):
            raise EncryptionError(f"{where}the id {key_id!r} is given to two keys")
        keys.append(EncryptionKey(key_id, secret))
    return keys


def _decode_key(encoded: str) -> bytes | None:
    if not _KEY_TEXT.fullmatch(encoded):
        return None
    try:
        if "-" in encoded or "_" in encoded:
            return base64.urlsafe_b64decode(encoded)
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None


def read_key_file(path: Path) -> list[EncryptionKey]:
    """The keys in a key file (`STEPFLOW_ENCRYPTION_KEY_FILE`).

    Raises:
        EncryptionError: the file cannot be read, or holds a bad key.
    """
    path = path.expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise EncryptionError(f"cannot read the key file {path}: {reason}") from None
    return parse_keys(text, source=str(path))


def load_keys(settings: Settings) -> list[EncryptionKey]:
    """The configured keys, the current one first; none: payloads are not encrypted.

    Raises:
        EncryptionError: bad keys (the settings check them when they are read, so only
            a key file changed since then can be bad here).
    """
    if settings.encryption_key is not None:
        return parse_keys(settings.encryption_key.get_secret_value())
    if settings.encryption_key_file is not None:
        return read_key_file(settings.encryption_key_file)
    return []


def describe_encryption(settings: Settings) -> str:
    """One line for logs: whether payloads are encrypted, and with which key ids."""
    keys = load_keys(settings)
    if not keys:
        return "off"
    older = f"; also decrypts {', '.join(key.id for key in keys[1:])}" if keys[1:] else ""
    return f"AES-256-GCM with key {keys[0].id}{older}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads, keys chosen by id.

    Without keys it encrypts nothing, and a payload that is encrypted fails to
    decode with a message that says which key it needs and where keys are set,
    rather than the SDK's "unknown encoding".
    """

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        self._current = keys[0] if keys else None
        self._ciphers = {key.id: AESGCM(key.secret) for key in keys}

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys, the current one first."""
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self._current is None:
            return list(payloads)
        key_id = self._current.id
        cipher = self._ciphers[key_id]
        encoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") == ENCODING:  # never twice
                encoded.append(payload)
                continue
            nonce = os.urandom(NONCE_BYTES)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
                    data=nonce + cipher.encrypt(nonce, payload.SerializeToString(), None),
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def decrypt(self, payload: Payload) -> Payload:
        """The payload as it was before encryption; any other payload as it is.

        Raises:
            EncryptionError: the payload's key is not configured, or it does not decrypt.
        """
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            if not self._ciphers:
                raise EncryptionError(
                    f"a payload is encrypted (key {key_id!r}) and this process has no key: "
                    "set STEPFLOW_ENCRYPTION_KEY or STEPFLOW_ENCRYPTION_KEY_FILE as the "
                    "workers have it"
                )
            raise EncryptionError(
                f"a payload is encrypted with key {key_id!r}, which is not among this "
                f"process's keys ({', '.join(self._ciphers)}): keep every key that open or "
                "retained runs use in STEPFLOW_ENCRYPTION_KEY, after the current one"
            )
        data = payload.data
        damaged = EncryptionError(
            f"a payload encrypted with key {key_id!r} does not decrypt: the key with that "
            "id is not the one it was written with, or the payload was altered"
        )
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise damaged
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            raise damaged from None
        decoded = Payload()
        try:
            decoded.ParseFromString(plain)
        except DecodeError:
            raise damaged from None
        return decoded


async def readable_failure(converter: DataConverter, failure: Failure) -> Failure:
    """A copy of `failure` whose messages and stack traces are back where a reader looks.

    With encryption on, a failure in history says "Encoded failure": its message
    and stack trace (and its causes') are in the encrypted `encoded_attributes`.
    Code that reads failures from raw history (`stepflow history`) opens them
    here; a failure it cannot decrypt is returned as it is.
    """
    opened = Failure()
    opened.CopyFrom(failure)
    try:
        await converter.decode_failure(opened)  # decodes the copy's payloads in place
    except Exception:
        return failure
    current: Failure | None = opened
    while current is not None:
        if current.HasField("encoded_attributes"):
            try:
                [attributes] = converter.payload_converter.from_payloads(
                    [current.encoded_attributes]
                )
            except Exception:
                attributes = None
            if isinstance(attributes, dict):
                current.message = str(attributes.get("message", current.message))
                current.stack_trace = str(attributes.get("stack_trace", current.stack_trace))
        current = current.cause if current.HasField("cause") else None
    return opened
