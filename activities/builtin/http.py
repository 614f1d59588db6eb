"""`http_get`: fetch a URL from an allow-listed host (`STEPFLOW_HTTP_ALLOW_HOSTS`).

Redirects are followed by hand (at most `MAX_REDIRECTS`) so that every hop's
host and port are checked against the allow-list, and the body is read as a
stream that stops at the size limit (a compressed body is inflated in bounded
steps, so a small "zip bomb" cannot blow up in memory). The whole fetch,
redirects included, has one deadline (`STEPFLOW_HTTP_TIMEOUT_SECONDS`).
Failures that another attempt may cure (timeouts, refused connections, 408,
429, 5xx) are retryable; the rest are not.

Every error message is passed through `redact_urls` before it leaves the tool:
a URL's user info and token-like query values never reach history.

The allow-list names hosts, and is checked against the host in the URL: the
address that name resolves to is the DNS's business. Allow names you trust
(a name whose DNS an attacker controls can point at 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Annotated, Any

import httpx
from pydantic import Field

from stepflow.activities.context import ToolError
from stepflow.activities.redaction import redact_urls
from stepflow.activities.registry import tool
from stepflow.runtime.settings import get_settings

MAX_REDIRECTS = 5
USER_AGENT = "stepflow-http-get"
MAX_URL_CHARS = 8192
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_INFLATE_STEP = 64 * 1024


class HostNotAllowed(ToolError):
    """A URL (or a redirect target) whose host and port `STEPFLOW_HTTP_ALLOW_HOSTS` lacks."""

    def __init__(self, host: str, url: str, port: int | None = None) -> None:
        where = f"host {host!r}" if port is None else f"port {port} of host {host!r}"
        super().__init__(
            f"{where} (in {url}) is not allowed: add it to STEPFLOW_HTTP_ALLOW_HOSTS "
            "(comma-separated: `host` for any port, `host:port` for one) to let http_get "
            "fetch from it",
            non_retryable=True,
        )
        self.host = host
        self.port = port


class InvalidUrl(ToolError):
    """A URL that is malformed, has no host, or is not http(s)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


class TooManyRedirects(ToolError):
    """More than `MAX_REDIRECTS` redirects in a row."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


class ResponseTooLarge(ToolError):
    """A body larger than the limit (`max_bytes`, capped by `STEPFLOW_HTTP_MAX_BYTES`)."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(
            f"the response from {url} is larger than {limit} bytes (the limit is the smaller "
            "of max_bytes and STEPFLOW_HTTP_MAX_BYTES)",
            non_retryable=True,
        )
        self.limit = limit


class HttpClientError(ToolError):
    """A 4xx response (except 408 and 429): the request itself is wrong; retrying cannot help."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"GET {url} returned {status} {reason}".rstrip(), non_retryable=True)
        self.status = status


class HttpServerError(ToolError):
    """A 5xx, 408 or 429 response: the server may do better later, so the call is retried."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"GET {url} returned {status} {reason}".rstrip(), non_retryable=False)
        self.status = status


class HttpUnavailable(ToolError):
    """No response (connection refused, DNS failure, timeout): the call is retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=False)


def _normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class AllowList:
    """`STEPFLOW_HTTP_ALLOW_HOSTS`: `host` allows any port, `host:port` (`[v6]:port`) one.

    Hosts match by name, case and a trailing dot aside: `127.0.0.1` does not allow
    `localhost`, nor `2130706433`, another spelling of the same address.
    """

    def __init__(self, entries: list[str]) -> None:
        self.any_port: set[str] = set()
        self.ports: set[tuple[str, int]] = set()
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if "/" in entry or "@" in entry:
                raise ToolError(
                    f"STEPFLOW_HTTP_ALLOW_HOSTS: {raw!r} is not a host: write host names or "
                    "host:port, not URLs",
                    non_retryable=True,
                )
            host, port = entry, ""
            if entry.startswith("["):  # [v6] or [v6]:port
                host, _, rest = entry[1:].partition("]")
                port = rest.removeprefix(":")
            elif entry.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
                host, port = entry.split(":")
            if not port:
                self.any_port.add(_normalize_host(host))
            elif port.isdigit() and 0 < int(port) < 65536:
                self.ports.add((_normalize_host(host), int(port)))
            else:
                raise ToolError(
                    f"STEPFLOW_HTTP_ALLOW_HOSTS: {raw!r} has no valid port", non_retryable=True
                )

    def check(self, url: httpx.URL) -> None:
        """Refuse a URL that is not http(s), has no host, or whose host and port are not allowed.

        Checks the URL as httpx parsed it, the same object it then connects to,
        so `http://allowed@evil/` is host `evil`, and `http://evil#@allowed/` too.
        """
        if url.scheme not in ("http", "https"):
            raise InvalidUrl(f"cannot fetch {url}: only http:// and https:// URLs are supported")
        if not url.host:
            raise InvalidUrl(f"cannot fetch {url}: the URL has no host")
        names = {
            _normalize_host(url.host),
            _normalize_host(url.raw_host.decode("ascii", "replace")),
        }
        if names & self.any_port:
            return
        port = url.port or _DEFAULT_PORTS[url.scheme]
        if any((name, port) in self.ports for name in names):
            return
        hosts = {host for host, _ in self.ports}
        raise HostNotAllowed(url.host, str(url), port if names & hosts else None)


def _inflater(encoding: str, url: str) -> Any:
    """A zlib decompressor for the body's Content-Encoding; None for none."""
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise ToolError(
        f"GET {url}: the response is encoded as {encoding!r}, which http_get does not read "
        "(it asks for identity, and reads gzip and deflate)",
        non_retryable=True,
    )


async def _read_limited(response: httpx.Response, url: str, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if declared.isdigit() and int(declared) > limit and encoding in ("", "identity"):
        raise ResponseTooLarge(url, limit)
    inflater = _inflater(encoding, url)
    body = bytearray()
    # Raw bytes as they come; the limit holds before more than a chunk is in memory.
    async for chunk in response.aiter_raw():
        if inflater is None:
            body += chunk
        else:
            try:
                pending = chunk
                while pending and len(body) <= limit:  # inflate in steps, never all at once
                    body += inflater.decompress(pending, _INFLATE_STEP)
                    pending = inflater.unconsumed_tail
            except zlib.error as err:
                raise httpx.DecodingError(f"{encoding} body: {err}") from None
        if len(body) > limit:
            raise ResponseTooLarge(url, limit)
    return bytes(body)


def _decode(response: httpx.Response, body: bytes) -> str:
    charset = response.charset_encoding or "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


async def _fetch(
    client: httpx.AsyncClient, url: httpx.URL, allowed: AllowList, limit: int
) -> dict[str, Any]:
    for _ in range(MAX_REDIRECTS + 1):
        allowed.check(url)  # every hop: a redirect may point anywhere
        async with client.stream("GET", url) as response:
            if response.has_redirect_location:
                url = response.url.join(response.headers["location"])
                continue
            status = response.status_code
            if status in _RETRYABLE_CLIENT_STATUSES or status >= 500:
                raise HttpServerError(str(url), status, response.reason_phrase)
            if 400 <= status < 500:
                raise HttpClientError(str(url), status, response.reason_phrase)
            body = await _read_limited(response, str(url), limit)
            return {
                "url": str(response.url),
                "status": status,
                "content_type": response.headers.get("content-type"),
                "text": _decode(response, body),
            }
    raise TooManyRedirects(f"GET {url}: more than {MAX_REDIRECTS} redirects")


@tool(max_request_bytes=64 * 1024)
async def http_get(
    url: Annotated[str, Field(description="The http:// or https:// URL to fetch.")],
    max_bytes: Annotated[
        int | None,
        Field(ge=1, description="Largest body to accept, capped by STEPFLOW_HTTP_MAX_BYTES."),
    ] = None,
) -> dict[str, Any]:
    """Fetch a web page or API response with HTTP GET and return its text.

    Only hosts (and ports) listed in STEPFLOW_HTTP_ALLOW_HOSTS can be fetched,
    redirect targets included. Error statuses fail the step: 4xx at once, 408, 429 and
    5xx after retries.

    Args:
        url: The http:// or https:// URL to fetch.
        max_bytes: The largest body to accept, in bytes; it cannot exceed
            STEPFLOW_HTTP_MAX_BYTES (the default).

    Returns:
        `{"url": <final URL after redirects>, "status": <HTTP status>,
        "content_type": <Content-Type header or null>, "text": <body as text>}`.
    """
    try:
        return await _http_get(url, max_bytes)
    except ToolError as err:
        # Messages quote the URL (and httpx's words, which may too): one place redacts them all.
        err.args = (redact_urls(str(err)),)
        raise


async def _http_get(url: str, max_bytes: int | None) -> dict[str, Any]:
    settings = get_settings()
    if max_bytes is not None and max_bytes < 1:
        raise ToolError(f"max_bytes must be at least 1, not {max_bytes}", non_retryable=True)
    limit = (
        settings.http_max_bytes if max_bytes is None else min(max_bytes, settings.http_max_bytes)
    )
    allowed = AllowList(settings.http_allow_hosts)
    if len(url) > MAX_URL_CHARS:
        raise InvalidUrl(f"the URL is {len(url):,} characters long, over {MAX_URL_CHARS:,}")
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise InvalidUrl(f"invalid URL {url!r}: {err}") from None
    allowed.check(target)  # before any connection is made
    seconds = settings.http_timeout_seconds
    try:
        # One deadline for the whole fetch: a server that drips a byte at a time, or
        # redirects again and again, cannot hold the call past it.
        async with (
            asyncio.timeout(seconds),
            httpx.AsyncClient(
                timeout=httpx.Timeout(seconds),
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            ) as client,
        ):
            return await _fetch(client, target, allowed, limit)
    except httpx.InvalidURL as err:
        raise InvalidUrl(f"invalid URL while fetching {url}: {err}") from None
    except (httpx.TimeoutException, TimeoutError) as err:
        raise HttpUnavailable(
            f"GET {url} timed out after {seconds:g}s ({type(err).__name__})"
        ) from None
    except httpx.DecodingError as err:
        raise ToolError(
            f"GET {url}: cannot decode the response body: {err}", non_retryable=True
        ) from None
    except httpx.HTTPError as err:
        raise HttpUnavailable(f"GET {url} failed: {type(err).__name__}: {err}") from None
