"""Time as epoch seconds, and its RFC 3339 UTC text form used on the wire and in the database."""

from __future__ import annotations

import time
from datetime import datetime, timezone


system_clock = time.time  # seconds since the epoch: the production clock (tests pass their own callable); time.time
#                            itself, not a function around it, as it is read several times per edit


_second: list = [None, ""]  # the last whole second formatted: iso() runs several times per edit


def iso(ts: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2025-11-07T10:00:00.000000Z (sorts as text)."""
    whole = int(ts // 1)
    if _second[0] != whole:
        _second[0], _second[1] = whole, datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    micros = int((ts - whole) * 1e6 + 0.5)  # (no min(), round() or format spec: this runs twice per edit)
    return "%s.%06dZ" % (_second[1], micros if micros < 1000000 else 999999)


def iso_seconds(ts: float) -> str:
    """RFC 3339 UTC to the second, as the reference shows: 2025-11-07T10:00:00Z."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    """Epoch seconds from an RFC 3339 timestamp (offset required; 'Z' accepted)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {text!r}")
    return value.timestamp()
