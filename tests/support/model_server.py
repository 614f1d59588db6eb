"""A scripted OpenAI Chat Completions server, so the tests never call a paid API.

Tests talk to it through the real `openai` client (the worker's model calls go to
`OPENAI_BASE_URL`), which keeps the whole client stack honest: request encoding, response
parsing, status-code-to-exception mapping and `Retry-After` handling are all the library's own.

A test plays a script, one reply per expected request, and reads the conversation like this::

    server.play(
        tool_calls(("lookup", {"q": "x"})),
        text("final answer"),
    )
    ...
    assert "x" in server.requests[1].text
    assert server.unexpected == []

Model chains send the same server requests for several models; `by_model` scripts each model
(the request's `model` field) on its own::

    server.respond_with(by_model(primary=[error(429), error(429)], backup=[text("ok")]))

`inject_faults(FaultPlan(seed, rate_429=..., ...))` puts random failures in front of the script
(429s with `Retry-After`, 500s, slow answers, malformed bodies), the same for the same seed;
`server.faults` says which request got which.

Only the standard library is used, so the server starts in milliseconds and has nothing to
install: a `ThreadingHTTPServer` in a daemon thread, one daemon thread per connection.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import select
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

TEST_API_KEY = "sk-test-stepflow-secret-0123456789"
"""A fake key that is easy to grep for: tests assert it is sent, and that it leaks nowhere else."""

COMPLETIONS_PATH = "/v1/chat/completions"
EXHAUSTED = "scripted model server: script exhausted"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it, kept for the test's assertions."""

    index: int
    """Arrival number, from 0; the same as the position in `server.requests`."""
    path: str
    body: dict[str, Any]
    """The parsed JSON body; empty if the body was not a JSON object (see `raw`)."""
    headers: dict[str, str]
    """Header names lower-cased, so lookups do not depend on how the client spelled them."""
    received_at: float
    """`time.monotonic()` when the body had been read; used to check that calls overlap."""
    raw: bytes = b""

    @property
    def authorization(self) -> str | None:
        """The `Authorization` header, e.g. `"Bearer sk-..."`, or None if it was not sent."""
        return self.headers.get("authorization")

    @property
    def model(self) -> str | None:
        model = self.body.get("model")
        return model if isinstance(model, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages")
        return messages if isinstance(messages, list) else []

    @property
    def tools(self) -> list[str]:
        """Names of the tools offered to the model, in the order the client sent them."""
        names: list[str] = []
        for tool in self.body.get("tools") or []:
            if not isinstance(tool, dict):
                continue
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if isinstance(name, str):
                names.append(name)
        return names

    @property
    def text(self) -> str:
        """Every message's text (and tool-call arguments) joined, for `"X" in request.text`."""
        parts: list[str] = []
        for message in self.messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    part["text"]
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    parts.append(f"{function.get('name', '')} {function.get('arguments', '')}")
        return "\n".join(parts)


# --- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One function call in an assistant message; `arguments` is sent exactly as given."""

    name: str
    arguments: str
    id: str


@dataclass(frozen=True)
class Completion:
    """A successful chat completion: text, or tool calls, or both."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens); None derives both deterministically from the sizes."""
    delay: float = 0.0
    """Seconds to wait before answering, to show that parallel calls overlap."""
    refusal: str | None = None
    """The message's `refusal`: the model declined (OpenAI's structured-output refusals)."""
    cached_tokens: int | None = None
    """`usage.prompt_tokens_details.cached_tokens`, when the provider reports a cache hit."""


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error with an OpenAI-style body, so the client raises its usual exception."""

    status: int
    message: str
    error_type: str
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Hang:
    """Keep the client waiting, to exercise client and activity timeouts.

    The wait ends early when the server stops, so `stop()` never blocks on it. Afterwards
    `then` is sent if the client is still connected; with `then=None` the connection is just
    closed without an answer.
    """

    seconds: float
    then: Completion | None = None


@dataclass(frozen=True)
class Fault:
    """An injected fault (see `FaultPlan`); scripted with `malformed()`."""

    kind: str
    seconds: float = 0.0
    """How long a `slow` answer waits; the `Retry-After` of a `rate_limited` one."""


Reply = Completion | ErrorReply | Hang | Fault
Responder = Callable[[RecordedRequest], Reply]
"""Chooses a reply from the request; for parallel steps whose requests arrive in any order."""
ScriptEntry = Reply | Responder

_REPLY_TYPES = (Completion, ErrorReply, Hang, Fault)


def text(
    content: str,
    *,
    usage: tuple[int, int] | None = None,
    delay: float = 0.0,
    finish_reason: str = "stop",
    cached_tokens: int | None = None,
) -> Completion:
    """The model answers with `content` and stops."""
    return Completion(
        content=content,
        finish_reason=finish_reason,
        usage=usage,
        delay=delay,
        cached_tokens=cached_tokens,
    )


def refusal(reason: str, *, usage: tuple[int, int] | None = None) -> Completion:
    """A 200 whose message declines to answer (`message.refusal`), with no content."""
    return Completion(content=None, refusal=reason, usage=usage)


def json_answer(
    value: Any, *, usage: tuple[int, int] | None = None, delay: float = 0.0
) -> Completion:
    """The model answers with `value` as JSON text, as it would for a structured-output step."""
    return Completion(content=json.dumps(value), usage=usage, delay=delay)


def tool_calls(
    *calls: tuple[str, Mapping[str, Any] | str] | ToolCall,
    content: str | None = None,
    usage: tuple[int, int] | None = None,
    delay: float = 0.0,
) -> Completion:
    """The model asks for tool calls: `tool_calls(("lookup", {"q": "x"}), ("f", '{"broken'))`.

    Dict arguments are JSON-encoded; a string is sent raw, so tests can send malformed JSON.
    Ids are "call_1", "call_2", ... in order within the reply; pass a `ToolCall` to choose one.
    """
    built: list[ToolCall] = []
    for number, call in enumerate(calls, start=1):
        if isinstance(call, ToolCall):
            built.append(call)
            continue
        name, arguments = call
        encoded = arguments if isinstance(arguments, str) else json.dumps(dict(arguments))
        built.append(ToolCall(name=name, arguments=encoded, id=f"call_{number}"))
    if not built:
        raise ValueError("tool_calls() needs at least one call")
    return Completion(
        content=content,
        tool_calls=tuple(built),
        finish_reason="tool_calls",
        usage=usage,
        delay=delay,
    )


# What the real API sends for these statuses; anything else is a generic server error.
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_denied", None),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error(
    status: int,
    message: str = "scripted error",
    *,
    headers: Mapping[str, str] | None = None,
    error_type: str | None = None,
    code: str | None = None,
) -> ErrorReply:
    """An HTTP error: `error(429, "slow down", headers={"Retry-After": "2"})`."""
    default_type, default_code = _ERROR_KINDS.get(status, ("server_error", None))
    return ErrorReply(
        status=status,
        message=message,
        error_type=error_type or default_type,
        code=code if code is not None else default_code,
        headers=tuple((headers or {}).items()),
    )


class ByModel:
    """A responder that answers each model from its own script, in order.

    Pass it to `server.respond_with`. A request for a model with nothing (left) scripted
    gets a 500 and lands in `server.unexpected`, as an unscripted request does.
    """

    def __init__(self, scripts: Mapping[str, Iterable[Reply]]) -> None:
        self._lock = threading.Lock()
        self._scripts = {model: deque(replies) for model, replies in scripts.items()}

    def __call__(self, request: RecordedRequest) -> Reply:
        with self._lock:
            script = self._scripts.get(request.model or "")
            if not script:
                raise LookupError(f"nothing (left) scripted for model {request.model!r}")
            return script.popleft()

    @property
    def remaining(self) -> dict[str, int]:
        """Replies not sent yet, per model."""
        with self._lock:
            return {model: len(script) for model, script in self._scripts.items()}


def by_model(**scripts: Iterable[Reply]) -> ByModel:
    """`by_model(primary=[error(429)], backup=[text("ok")])`: one script per model name."""
    return ByModel(scripts)


def hang(seconds: float, then: Completion | None = None) -> Hang:
    """Say nothing for `seconds` (or until the server stops), then send `then` or hang up."""
    return Hang(seconds=seconds, then=then)


def malformed(kind: str) -> Fault:
    """A 200 the client cannot use: `malformed(NOT_JSON)`, `TRUNCATED_JSON` or `NO_CHOICES`."""
    if kind not in MALFORMED:
        raise ValueError(f"malformed() takes one of {MALFORMED}, not {kind!r}")
    return Fault(kind)


# --- faults ------------------------------------------------------------------------------------

RATE_LIMITED = "rate_limited"
"""A 429 with `Retry-After`; the client raises `openai.RateLimitError`."""
SERVER_ERROR = "server_error"
"""A 500; the client raises `openai.InternalServerError`."""
SLOW = "slow"
"""The scripted answer, after a random wait of up to `FaultPlan.slow_seconds`."""
NOT_JSON = "not_json"
"""A 200 whose body is a proxy's HTML page, though it says `application/json`."""
TRUNCATED_JSON = "truncated_json"
"""A 200 whose JSON body stops halfway (its `Content-Length` says so: the client reads it all)."""
NO_CHOICES = "no_choices"
"""A 200 with well-formed JSON in the wrong shape: a chat completion without `choices`."""

MALFORMED = (NOT_JSON, TRUNCATED_JSON, NO_CHOICES)
FAULT_KINDS = (RATE_LIMITED, SERVER_ERROR, SLOW, *MALFORMED)


@dataclass(frozen=True)
class FaultPlan:
    """Random failures in front of the script, drawn from `random.Random(seed)`.

    Each request draws in arrival order, the same number of draws whatever it gets, so a seed
    gives the same sequence of faults every time (`preview` shows it without a server). Under
    concurrency which request is the n-th can vary; the sequence cannot. A faulted request other
    than `slow` does not consume a scripted reply: the client's retry gets it.
    """

    seed: int
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    rate_malformed: float = 0.0
    """Split evenly between `not_json`, `truncated_json` and `no_choices`."""
    slow_seconds: float = 1.0
    """A slow answer waits between 0 and this long."""
    retry_after: float = 0.1
    """Seconds the 429s ask the client to wait (`Retry-After`)."""

    def __post_init__(self) -> None:
        rates = (self.rate_429, self.rate_500, self.rate_slow, self.rate_malformed)
        if any(rate < 0 for rate in rates) or sum(rates) > 1:
            raise ValueError(f"fault rates must be >= 0 and add up to at most 1, not {rates}")

    def dice(self) -> FaultDice:
        return FaultDice(self)

    def preview(self, count: int) -> list[str | None]:
        """The kinds the first `count` requests get (None: no fault)."""
        dice = self.dice()
        return [fault.kind if fault else None for fault in (dice.roll() for _ in range(count))]


@dataclass(frozen=True)
class InjectedFault:
    """Which fault one request got, for the test's assertions."""

    index: int
    """The request's arrival number (`RecordedRequest.index`)."""
    kind: str
    seconds: float = 0.0


@dataclass
class FaultDice:
    """The draws of one plan: three numbers per request, whatever the outcome."""

    plan: FaultPlan
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.plan.seed)

    def roll(self) -> Fault | None:
        plan = self.plan
        draw, variant, wait = self._rng.random(), self._rng.random(), self._rng.random()
        if draw < plan.rate_429:
            return Fault(RATE_LIMITED, seconds=plan.retry_after)
        draw -= plan.rate_429
        if draw < plan.rate_500:
            return Fault(SERVER_ERROR)
        draw -= plan.rate_500
        if draw < plan.rate_slow:
            return Fault(SLOW, seconds=wait * plan.slow_seconds)
        draw -= plan.rate_slow
        if draw < plan.rate_malformed:
            return Fault(MALFORMED[min(int(variant * len(MALFORMED)), len(MALFORMED) - 1)])
        return None


# --- the server --------------------------------------------------------------------------------


class ScriptedModelServer:
    """Serves `POST /v1/chat/completions` from a FIFO script of replies.

    Each request takes the next scripted entry; an entry may be a callable that picks the reply
    from the request. When the script is empty the fallback responder (`respond_with`) answers;
    without one the request gets a 500 and lands in `unexpected`, so a test can assert that the
    code under test made exactly the calls it scripted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[ScriptEntry] = deque()
        self._fallback: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._unexpected: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._dice: FaultDice | None = None
        self._faults: list[InjectedFault] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> ScriptedModelServer:
        if self._httpd is not None:
            raise RuntimeError("scripted model server already started")
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # so stop() returns promptly
            name="scripted-model-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; waits, delays and open keep-alive connections are cut short."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("scripted model server is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What `openai.AsyncOpenAI(base_url=...)` / `OPENAI_BASE_URL` should be."""
        return f"http://127.0.0.1:{self.port}/v1"

    # the script

    def play(self, *replies: ScriptEntry) -> None:
        """Queue replies (or responders) for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def respond_with(self, responder: Responder | None) -> None:
        """Answer with `responder` whenever the script is empty (None removes it)."""
        with self._lock:
            self._fallback = responder

    def inject_faults(self, plan: FaultPlan | None) -> None:
        """Put `plan`'s random faults in front of every later request (None: no more faults)."""
        with self._lock:
            self._dice = plan.dice() if plan is not None else None

    @property
    def faults(self) -> list[InjectedFault]:
        """The faults injected so far, in the order they were drawn (a snapshot)."""
        with self._lock:
            return list(self._faults)

    @property
    def remaining(self) -> int:
        """Scripted entries not consumed yet; 0 once the code under test made every call."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def unexpected(self) -> list[RecordedRequest]:
        """Requests nothing was scripted for, or that the server had to reject (a snapshot)."""
        with self._lock:
            return list(self._unexpected)

    # used by the handler

    def _record(
        self, path: str, headers: dict[str, str], raw: bytes, body: dict[str, Any]
    ) -> RecordedRequest:
        with self._lock:
            request = RecordedRequest(
                index=len(self._requests),
                path=path,
                body=body,
                headers=headers,
                received_at=time.monotonic(),
                raw=raw,
            )
            self._requests.append(request)
            return request

    def _mark_unexpected(self, request: RecordedRequest) -> None:
        with self._lock:
            self._unexpected.append(request)

    def _draw_fault(self, request: RecordedRequest) -> Fault | None:
        with self._lock:
            fault = self._dice.roll() if self._dice is not None else None
            if fault is not None:
                self._faults.append(InjectedFault(request.index, fault.kind, fault.seconds))
            return fault

    def _next_entry(self) -> ScriptEntry | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
            return self._fallback

    def _completion_body(self, request: RecordedRequest, reply: Completion) -> dict[str, Any]:
        if reply.usage is not None:
            prompt_tokens, completion_tokens = reply.usage
        else:
            prompt_tokens = max(1, len(json.dumps(request.messages)) // 4)
            produced = (reply.content or "") + "".join(
                call.name + call.arguments for call in reply.tool_calls
            )
            completion_tokens = max(1, len(produced) // 4)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.content,
            "refusal": reply.refusal,
        }
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in reply.tool_calls
            ]
        return {
            "id": f"chatcmpl-scripted-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or "unknown",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": reply.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                **(
                    {"prompt_tokens_details": {"cached_tokens": reply.cached_tokens}}
                    if reply.cached_tokens is not None
                    else {}
                ),
            },
        }


class _HTTPServer(ThreadingHTTPServer):
    """Tracks live connections so `stop()` can close idle keep-alive ones too."""

    daemon_threads = True
    block_on_close = False
    owner: ScriptedModelServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, connection: socket.socket, live: bool) -> None:
        with self._connections_lock:
            if live:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that times out or is cancelled mid-request is routine here, not news.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    server_version = "ScriptedModelServer/1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

    @property
    def _httpd(self) -> _HTTPServer:
        return cast(_HTTPServer, self.server)

    def setup(self) -> None:
        super().setup()
        self._httpd.track(self.connection, live=True)

    def finish(self) -> None:
        self._httpd.track(self.connection, live=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output should show the test's own failures, not an access log."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        owner = self._httpd.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else {}
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = self.path.split("?", 1)[0]
        request = owner._record(path, headers, raw, body)

        rejection = self._rejection(request, parsed)
        if rejection is not None:
            owner._mark_unexpected(request)
            self._send_error(rejection)
            return

        fault = owner._draw_fault(request)
        if fault is not None and fault.kind != SLOW:
            self._send_fault(request, fault)
            return

        entry = owner._next_entry()
        if entry is None:
            owner._mark_unexpected(request)
            self._send_error(error(500, f"{EXHAUSTED} (request #{request.index})"))
            return
        if isinstance(entry, _REPLY_TYPES):
            reply: Reply = entry
        else:
            try:
                reply = entry(request)
            except Exception as exc:
                owner._mark_unexpected(request)
                message = f"scripted model server: responder raised {exc!r}"
                self._send_error(error(500, message))
                return
        if fault is not None and owner._stopping.wait(fault.seconds):
            self.close_connection = True
            return
        self._send_reply(request, reply)

    def _rejection(self, request: RecordedRequest, parsed: object) -> ErrorReply | None:
        """Requests the script never answers: wrong route, unparseable, or streaming."""
        if self.command != "POST" or request.path != COMPLETIONS_PATH:
            return error(404, f"scripted model server: no route {self.command} {request.path}")
        if not isinstance(parsed, dict):
            return error(400, "scripted model server: body is not a JSON object")
        if parsed.get("stream"):
            return error(400, "scripted model server: streaming is not supported")
        return None

    def _send_reply(self, request: RecordedRequest, reply: Reply) -> None:
        stopping = self._httpd.owner._stopping
        if isinstance(reply, Fault):
            self._send_fault(request, reply)
            return
        if isinstance(reply, ErrorReply):
            self._send_error(reply)
            return
        if isinstance(reply, Hang):
            if stopping.wait(reply.seconds) or reply.then is None or self._client_gone():
                self.close_connection = True
                return
            reply = reply.then
        if reply.delay > 0 and stopping.wait(reply.delay):
            self.close_connection = True
            return
        self._send_json(200, self._httpd.owner._completion_body(request, reply))

    def _send_fault(self, request: RecordedRequest, fault: Fault) -> None:
        owner = self._httpd.owner
        if fault.kind == RATE_LIMITED:
            retry_after = {"Retry-After": f"{fault.seconds:g}"}
            self._send_error(error(429, "injected fault: rate limited", headers=retry_after))
        elif fault.kind == SERVER_ERROR:
            self._send_error(error(500, "injected fault: server error"))
        elif fault.kind == NOT_JSON:
            self._send_bytes(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
        elif fault.kind in (TRUNCATED_JSON, NO_CHOICES):
            body = owner._completion_body(request, text("injected fault: a malformed body"))
            if fault.kind == NO_CHOICES:
                del body["choices"]
                self._send_json(200, body)
            else:
                data = json.dumps(body).encode()
                self._send_bytes(200, data[: len(data) // 2])
        else:
            raise ValueError(f"not a fault that replies at once: {fault.kind!r}")

    def _send_error(self, reply: ErrorReply) -> None:
        payload = {
            "error": {
                "message": reply.message,
                "type": reply.error_type,
                "param": None,
                "code": reply.code,
            }
        }
        self._send_json(reply.status, payload, reply.headers)

    def _send_json(
        self,
        status: int,
        payload: dict[str, Any],
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), headers)

    def _send_bytes(
        self, status: int, data: bytes, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            # The client gave up (timeout, cancellation); nobody is left to tell.
            self.close_connection = True

    def _client_gone(self) -> bool:
        """True if the client closed its end while we were not answering."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
