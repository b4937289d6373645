"""Inngest's time strings: `"30s"`, `"1d"`, `"2h30m"`, `"1.5h"`, `"300ms"`.

A time string is a sequence of decimal numbers, each with an optional fraction and a unit
(`ns`, `us` or `µs`, `ms`, `s`, `m`, `h`, `d`, `w`; a day is 24 hours, a week 168), as the
SDKs send them for sleeps, wait timeouts and flow-control periods. Parsing is strict: an
empty string, a missing unit, a sign or anything left over is refused, so that a typo is
never read as some other duration. A sleep may instead give an RFC 3339 instant
(`until`).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d|w))+$")
MAX_SECONDS = 10 * 365 * 86400.0  # ten years: longer is a mistake, not a plan


def seconds(text: object, *, what: str) -> float:
    """The seconds a time string stands for; ValueError naming `what` when it is not one."""
    if not isinstance(text, str) or len(text) > 64 or not _WHOLE.match(text):
        raise ValueError(
            f"{what} must be a time string such as '30s', '1d' or '2h30m', got {text!r}"
        )
    total = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    if not math.isfinite(total) or total > MAX_SECONDS:
        raise ValueError(f"{what} {text!r} is longer than ten years")
    return total


def instant(text: object, *, what: str) -> datetime:
    """An RFC 3339 instant (`2026-12-06T10:00:00Z`), as an aware datetime in UTC."""
    if not isinstance(text, str) or not 10 <= len(text) <= 40 or "T" not in text:
        raise ValueError(f"{what} must be an RFC 3339 date-time, got {text!r}")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} must be an RFC 3339 date-time, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
