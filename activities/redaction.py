"""Secrets in URLs, taken out of text before it goes into history, logs or a model's context.

A URL may carry a credential in two places: its user info
(`https://user:password@host/`, or a token as the user name) and its query or
fragment (`?token=...`, `&api_key=...`, `#access_token=...`, a presigned S3
URL's `X-Amz-Signature=...`). An error message that quotes the URL would put
them into the run's history for good, where anyone who can read the run sees
them (encryption protects payloads, not failure messages by default).
"""

from __future__ import annotations

import re

_USER_INFO = re.compile(r"(?<=://)[^/?#\s'\"<>]*@")
"""`scheme://` then everything up to the last `@` before the path: the user info."""

_SECRET_NAME = (
    r"[\w.-]*(?:token|secret|passw(?:or)?d|pwd|signature|credential|api[-_]?key|"
    r"access[-_]?key|private[-_]?key|auth(?!or)|session)[\w.-]*"
    r"|(?:[\w.-]*[-_.])?(?:key|sig)"
)
"""Parameter names that hold secrets: `token`, `api_key`, `X-Amz-Signature`, `key`, `sig`...

`key` and `sig` count alone or as the last word of a name (`api.key`, `url_sig`), so
`monkey` and `keyword` are left alone.
"""

_SECRET_PARAM = re.compile(
    rf"(?i)([?&#;](?:{_SECRET_NAME}))=[^&#;\s'\"<>]*?(?=[).,:;\]]*(?:[&#\s'\"<>]|$))"
)
"""A secret parameter's value: up to the next parameter, or the end of the URL (punctuation
that closes the sentence around the URL, such as `)` or `:`, stays)."""


def redact_urls(text: str) -> str:
    """`text` with the user info of every URL and the values of secret-looking parameters as `***`.

    `https://user:pw@host/x?token=abc&page=2` becomes `https://***@host/x?token=***&page=2`.
    The rest of the text, the URL's host and path included, is unchanged, so an error
    still says which URL failed.
    """
    text = _USER_INFO.sub("***@", text)
    return _SECRET_PARAM.sub(r"\1=***", text)
