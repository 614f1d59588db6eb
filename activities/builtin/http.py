"""`http_get`: fetch a URL from an allow-listed host (`STEPFLOW_HTTP_ALLOW_HOSTS`).

Redirects are followed by hand (at most `MAX_REDIRECTS`) so that every hop's
host is checked against the allow-list, and the body is read as a stream that
stops at the size limit. Failures that another attempt may cure (timeouts,
refused connections, 408, 429, 5xx) are retryable; the rest are not.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from pydantic import Field

from activities.context import ToolError
from activities.registry import tool
from runtime.settings import get_settings

MAX_REDIRECTS = 5
USER_AGENT = "stepflow-http-get"
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})


class HostNotAllowed(ToolError):
    """A URL (or a redirect target) whose host is not in `STEPFLOW_HTTP_ALLOW_HOSTS`."""

    def __init__(self, host: str, url: str) -> None:
        super().__init__(
            f"host {host!r} (in {url}) is not allowed: add it to STEPFLOW_HTTP_ALLOW_HOSTS "
            "(comma-separated host names) to let http_get fetch from it",
            non_retryable=True,
        )
        self.host = host


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


def _check_url(url: httpx.URL, allowed: set[str]) -> None:
    if url.scheme not in ("http", "https"):
        raise InvalidUrl(f"cannot fetch {url}: only http:// and https:// URLs are supported")
    if not url.host:
        raise InvalidUrl(f"cannot fetch {url}: the URL has no host")
    names = {_normalize_host(url.host), _normalize_host(url.raw_host.decode("ascii", "replace"))}
    if not names & allowed:
        raise HostNotAllowed(url.host, str(url))


async def _read_limited(response: httpx.Response, url: str, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if declared.isdigit() and int(declared) > limit and encoding in ("", "identity"):
        raise ResponseTooLarge(url, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise ResponseTooLarge(url, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(response: httpx.Response, body: bytes) -> str:
    charset = response.charset_encoding or "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


async def _fetch(
    client: httpx.AsyncClient, url: httpx.URL, allowed: set[str], limit: int
) -> dict[str, Any]:
    for _ in range(MAX_REDIRECTS + 1):
        _check_url(url, allowed)
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


@tool
async def http_get(
    url: Annotated[str, Field(description="The http:// or https:// URL to fetch.")],
    max_bytes: Annotated[
        int | None,
        Field(ge=1, description="Largest body to accept, capped by STEPFLOW_HTTP_MAX_BYTES."),
    ] = None,
) -> dict[str, Any]:
    """Fetch a web page or API response with HTTP GET and return its text.

    Only hosts listed in STEPFLOW_HTTP_ALLOW_HOSTS can be fetched, redirect
    targets included. Error statuses fail the step: 4xx at once, 408, 429 and
    5xx after retries.

    Args:
        url: The http:// or https:// URL to fetch.
        max_bytes: The largest body to accept, in bytes; it cannot exceed
            STEPFLOW_HTTP_MAX_BYTES (the default).

    Returns:
        `{"url": <final URL after redirects>, "status": <HTTP status>,
        "content_type": <Content-Type header or null>, "text": <body as text>}`.
    """
    settings = get_settings()
    if max_bytes is not None and max_bytes < 1:
        raise ToolError(f"max_bytes must be at least 1, not {max_bytes}", non_retryable=True)
    limit = (
        settings.http_max_bytes if max_bytes is None else min(max_bytes, settings.http_max_bytes)
    )
    allowed = {_normalize_host(host) for host in settings.http_allow_hosts if host.strip()}
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise InvalidUrl(f"invalid URL {url!r}: {err}") from None
    timeout = httpx.Timeout(settings.http_timeout_seconds)
    try:
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, headers={"User-Agent": USER_AGENT}
        ) as client:
            return await _fetch(client, target, allowed, limit)
    except httpx.InvalidURL as err:
        raise InvalidUrl(f"invalid URL while fetching {url}: {err}") from None
    except httpx.TimeoutException as err:
        raise HttpUnavailable(
            f"GET {url} timed out after {settings.http_timeout_seconds:g}s ({type(err).__name__})"
        ) from None
    except httpx.DecodingError as err:
        raise ToolError(
            f"GET {url}: cannot decode the response body: {err}", non_retryable=True
        ) from None
    except httpx.HTTPError as err:
        raise HttpUnavailable(f"GET {url} failed: {type(err).__name__}: {err}") from None
