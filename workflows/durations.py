"""Human-friendly durations (`30s`, `5m`, `1h30m`, `250ms`) for pipeline files.

Pure functions only: this module is imported inside the workflow sandbox.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

MAX_SECONDS = 100 * 365 * 86400
"""The longest duration accepted: 100 years (Temporal's durations end near 292 years)."""


def _seconds(total: float, value: Any) -> timedelta:
    # `.inf` in YAML, or 99999999999d, would otherwise end in an OverflowError traceback.
    if not total <= MAX_SECONDS:  # also catches NaN
        raise ValueError(f"invalid duration {value!r}: at most 100 years (36500d)")
    return timedelta(seconds=total)


_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")


def parse_duration(value: Any) -> Any:
    """Turn `30s`, `5m`, `1h30m`, `250ms` or a number of seconds into a timedelta.

    Anything else is passed on untouched so pydantic's own timedelta parsing
    (ISO 8601 such as `PT30S`, which is how durations travel in payloads)
    gets its turn and reports the error if it cannot parse it either.
    """
    if isinstance(value, bool):
        return value  # bool is an int subclass; let pydantic reject it
    if isinstance(value, int | float):
        return _seconds(value, value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if _WHOLE.match(text):
            return _seconds(sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text)), value)
        if not text.startswith(("p", "-p")) and not text.replace(".", "", 1).isdigit():
            raise ValueError(
                f"invalid duration {value!r}: "
                "use a number and a unit, e.g. 500ms, 30s, 5m, 2h, 1h30m"
            )
    return value


def format_duration(value: timedelta) -> str:
    """The short form parse_duration reads back (`1h30m`, `2.5s`)."""
    total = value.total_seconds()
    if total < 1 and total != 0:
        return f"{round(total * 1000)}ms"
    parts = []
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if total >= size:
            count = int(total // size)
            parts.append(f"{count}{unit}")
            total -= count * size
    if total or not parts:
        parts.append(f"{total:g}s")
    return "".join(parts)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


PositiveDuration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_positive),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A duration that must be longer than zero (timeouts, intervals)."""
