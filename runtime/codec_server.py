"""`stepflow codec-server`: Temporal's codec server protocol, so people read encrypted runs.

With encryption on, the Temporal server, its Web UI and the `temporal` CLI see
only ciphertext. The Web UI and the CLI can send payloads to a codec server
(`POST <endpoint>/decode` and `/encode`, a JSON body `{"payloads": [...]}` of
protobuf-JSON payloads) and show what it answers. This one decrypts with the
configured keys, and also fetches payloads kept in the payload store, so the
UI shows a large value instead of its reference.

Whoever can call it reads every run's data, so every POST needs the token
(`STEPFLOW_CODEC_SERVER_TOKEN`): in `Authorization: Bearer <token>` (the
`temporal` CLI's `--codec-auth`), or as a segment of the path before
`/decode` (`http://host:8081/<token>`), since the Web UI cannot send a header
of the user's choosing. Requests from browsers are answered only for the
allowed origins (CORS). The server never logs a path (it may hold the token)
nor a payload.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import urllib.parse
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.sdk.v1.external_storage_pb2 import ExternalStorageReference
from temporalio.converter import (
    ExternalStorage,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
)

from stepflow.runtime.encryption import EncryptionCodec, EncryptionError, load_keys
from stepflow.runtime.payload_storage import PayloadStoreError, stepflow_data_converter
from stepflow.runtime.settings import Settings

log = structlog.get_logger("stepflow.codec_server")

DEFAULT_PORT = 8081
MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body read: a batch of inline payloads is at most a few MB."""
REFUSED_BODY_BYTES = 64 * 1024
"""The most of a request without the token that is read, to answer it cleanly."""

_REFERENCE_TYPE = ExternalStorageReference.DESCRIPTOR.full_name.encode()
_ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"


class CodecServerError(RuntimeError):
    """The codec server cannot start: no token, or the address is taken."""


class PayloadService:
    """What the server does to payloads: decrypt and fetch stored ones, or encrypt."""

    def __init__(self, codec: EncryptionCodec, storage: ExternalStorage | None) -> None:
        self.codec = codec
        self._drivers = {driver.name(): driver for driver in storage.drivers} if storage else {}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await self.codec.encode(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Each payload decoded; one that cannot be is answered as it came (and logged).

        So one payload from before a key was dropped does not blank a whole page of the UI.
        """
        decoded = []
        for payload in payloads:
            try:
                decoded.append(await self._decode_one(payload))
            except (EncryptionError, PayloadStoreError, json_format.ParseError, ValueError) as err:
                log.warning("a payload could not be decoded; answered as it came", reason=str(err))
                decoded.append(payload)
        return decoded

    async def _decode_one(self, payload: Payload) -> Payload:
        # A reference may come encrypted itself (SDKs may encode references one day).
        payload = self.codec.decrypt(payload)
        reference = _reference(payload)
        if reference is None:
            return payload
        driver = self._drivers.get(reference.driver_name)
        if driver is None:
            raise PayloadStoreError(
                f"a payload is kept by the store {reference.driver_name!r}, which this server "
                "does not read (STEPFLOW_PAYLOAD_STORE, STEPFLOW_PAYLOAD_S3_BUCKET)"
            )
        claim = StorageDriverClaim(claim_data=dict(reference.claim_data))
        [stored] = await driver.retrieve(StorageDriverRetrieveContext(), [claim])
        return self.codec.decrypt(stored)


def _reference(payload: Payload) -> ExternalStorageReference | None:
    """The payload store reference that `payload` is, if it is one (the SDK's format)."""
    if (
        payload.metadata.get("encoding") != b"json/protobuf"
        or payload.metadata.get("messageType") != _REFERENCE_TYPE
    ):
        return None
    reference = ExternalStorageReference()
    json_format.Parse(payload.data, reference, ignore_unknown_fields=True)
    return reference


def default_origins(settings: Settings) -> list[str]:
    """The allowed origins: the configured ones, else the origin of the Web UI's URL."""
    if settings.codec_server_origins:
        return list(settings.codec_server_origins)
    url = urllib.parse.urlsplit(settings.ui_url)
    return [f"{url.scheme}://{url.netloc}"] if url.scheme and url.netloc else []


def build_codec_server(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    origins: Sequence[str] | None = None,
) -> CodecServer:
    """A codec server with the settings' keys, payload store and token (not started yet).

    Raises:
        CodecServerError: no token is configured.
        PayloadStoreError: unusable payload store settings.
        EncryptionError: a key file that has become unreadable since the settings were read.
    """
    if settings.codec_server_token is None:
        raise CodecServerError(
            "STEPFLOW_CODEC_SERVER_TOKEN is not set: whoever calls the codec server reads "
            "every run's data, so it needs a token, e.g. "
            "export STEPFLOW_CODEC_SERVER_TOKEN=$(openssl rand -hex 32)"
        )
    # The payload store as the workers have it, so the references in history resolve.
    storage = stepflow_data_converter(settings).external_storage
    service = PayloadService(EncryptionCodec(load_keys(settings)), storage)
    allowed = [o.rstrip("/") for o in origins] if origins else default_origins(settings)
    return CodecServer(
        service,
        token=settings.codec_server_token.get_secret_value(),
        origins=allowed,
        host=host,
        port=port,
    )


class CodecServer:
    """The HTTP server, on threads of its own: `start()`, then `stop()`.

    Requests are served on threads; the payload work runs on one event loop of
    the server's own (the store drivers are asynchronous).
    """

    def __init__(
        self,
        service: PayloadService,
        *,
        token: str,
        origins: Sequence[str],
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
    ) -> None:
        self.service = service
        self.origins = list(origins)
        self._token = token.encode()
        self._address = (host, port)
        self._loop = asyncio.new_event_loop()
        self._threads: list[threading.Thread] = []
        self._httpd: _HTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._address[0]
        return f"http://{'localhost' if host in ('', '0.0.0.0', '::') else host}:{self.port}"

    def start(self) -> None:
        """Listen and serve in the background.

        Raises:
            CodecServerError: the address cannot be listened on.
        """
        try:
            self._httpd = _HTTPServer(self._address, _Handler, self)
        except OSError as err:
            host, port = self._address
            raise CodecServerError(f"cannot listen on {host}:{port}: {err.strerror}") from None
        self._threads = [
            threading.Thread(target=self._loop.run_forever, name="codec-loop", daemon=True),
            threading.Thread(target=self._httpd.serve_forever, name="codec-http", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop serving, and wait for the threads to end."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    def authorized(self, header: str | None, segments: Sequence[str]) -> bool:
        """The token came in the Authorization header or as a path segment."""
        offered = []
        if header and header[:7].lower() == "bearer ":
            offered.append(header[7:].strip())
        offered += segments
        # Every candidate is compared, in constant time, so timing tells nothing of the token.
        matches = [hmac.compare_digest(candidate.encode(), self._token) for candidate in offered]
        return any(matches)

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (origin in self.origins or "*" in self.origins)

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, owner: CodecServer) -> None:
        self.owner = owner
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "stepflow-codec-server"
    sys_version = ""  # the Server header names no Python version
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that stalls mid-request does not hold a thread forever

    @property
    def _owner(self) -> CodecServer:
        server = self.server
        assert isinstance(server, _HTTPServer)
        return server.owner

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line may hold the token. Requests are logged by `_log`."""

    def _log(self, status: int, route: str, **fields: Any) -> None:
        event = "codec server request"
        if status >= 400:
            log.warning(event, method=self.command, route=route, status=status, **fields)
        else:
            log.debug(event, method=self.command, route=route, status=status, **fields)

    def _route(self) -> tuple[str, list[str]]:
        """`decode`, `encode`, `health` or "" (unknown), and the path's segments before it."""
        path = urllib.parse.urlsplit(self.path).path
        segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
        if segments and segments[-1] in ("decode", "encode"):
            return segments[-1], segments[:-1]
        if segments == ["health"]:
            return "health", []
        return "", segments

    def _cors_headers(self) -> None:
        origin = self.headers.get("Origin")
        if self._owner.allows(origin):
            # No Allow-Credentials: the token is the credential, never a cookie.
            self.send_header("Access-Control-Allow-Origin", origin or "")
        self.send_header("Vary", "Origin")

    def _send(
        self,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self._cors_headers()
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # decrypted data is never cached
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, route: str, **extra: str) -> None:
        # Plain text, not JSON: the Web UI takes any JSON answer for decoded payloads (it does
        # not look at the status) and breaks; on text it shows the payloads as they are and
        # marks the codec server as failing.
        self._log(status, route, reason=message)
        body = f"{status} {self.responses[status][0]}: {message}\n".encode()
        self._send(status, body, extra, content_type="text/plain; charset=utf-8")

    def do_OPTIONS(self) -> None:  # the browser's CORS preflight: it carries no token
        route, _ = self._route()
        if not self._owner.allows(self.headers.get("Origin")):
            self._error(403, "origin not allowed (stepflow codec-server --origin)", route)
            return
        self.send_response(204)
        self._cors_headers()
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", _ALLOWED_HEADERS)
        self.send_header("Access-Control-Max-Age", "600")
        if self.headers.get("Access-Control-Request-Private-Network") == "true":
            # Chrome asks before a public page (e.g. Temporal Cloud's UI) calls localhost.
            self.send_header("Access-Control-Allow-Private-Network", "true")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        route, _ = self._route()
        if route == "health":  # for health checks: says nothing but that it runs
            self._send(200, b'{"status": "ok"}')
        elif route:
            self._error(405, "use POST", route, Allow="POST, OPTIONS")
        else:
            self._error(404, "no such route: POST /decode or /encode", route)

    def do_POST(self) -> None:
        route, segments = self._route()
        if route not in ("decode", "encode"):
            self._error(404, "no such route: POST /decode or /encode", route)
            return
        origin = self.headers.get("Origin")
        if origin is not None and not self._owner.allows(origin):
            self._error(403, "origin not allowed (stepflow codec-server --origin)", route)
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._error(411, "Content-Length is required", route)
            return
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413, f"the body is over {MAX_BODY_BYTES:,} bytes", route)
            return
        if not self._owner.authorized(self.headers.get("Authorization"), segments):
            # Checked before the body is read: without the token nobody makes this server hold
            # 16 MB or a thread for long. A small body is still read, so that the browser sees
            # the answer (closing on unread data resets the connection); a large one is not.
            if length <= REFUSED_BODY_BYTES:
                self.rfile.read(length)
            else:
                self.close_connection = True
            self._error(401, "a valid token is required", route, **{"WWW-Authenticate": "Bearer"})
            return
        body = self.rfile.read(length)
        payloads = Payloads()
        try:
            json_format.Parse(body, payloads, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError) as err:
            self._error(400, f'expected {{"payloads": [...]}} of Temporal payloads: {err}', route)
            return
        service = self._owner.service
        work = service.decode if route == "decode" else service.encode
        try:
            result = self._owner.run(work(list(payloads.payloads)))
        except Exception as err:  # encode failing means a bug: say so, keep serving
            log.exception("the codec server failed", route=route)
            self._error(500, f"{type(err).__name__}", route)
            return
        answer = json_format.MessageToJson(Payloads(payloads=result), indent=None).encode()
        self._log(200, route, payloads=len(result), namespace=self.headers.get("X-Namespace", ""))
        self._send(200, answer)
