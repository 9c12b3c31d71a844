"""Time as epoch seconds, and its RFC 3339 UTC text form used on the wire and in the database."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def system_clock() -> float:
    """Seconds since the epoch; the production clock (tests pass their own callable)."""
    return time.time()


def iso(ts: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2025-11-07T10:00:00.000000Z (sorts as text)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_seconds(ts: float) -> str:
    """RFC 3339 UTC to the second, as the reference shows: 2025-11-07T10:00:00Z."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    """Epoch seconds from an RFC 3339 timestamp (offset required; 'Z' accepted)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {text!r}")
    return value.timestamp()
