"""Security events with consistent types and severities, and the per-session violation window."""

from __future__ import annotations

from typing import Any, Callable

from .clock import iso
from .ratelimit import WindowCounter
from .store import Store

SEVERITIES = ("info", "low", "medium", "high", "critical")

# Every security event type and its severity, so the same thing is always filed the same way.
SECURITY_TYPES = {
    "invalid_session": "medium",
    "unauthorized": "medium",
    "impersonation": "high",
    "rate_limited": "low",
    "session_rate_limited": "low",
    "message_too_large": "medium",
    "invalid_message": "medium",
    "xss_attempt": "high",
    "origin_rejected": "medium",
    "connection_limit": "low",
    "abuse_disconnect": "high",
    "session_invalidated_for_abuse": "high",
}


def _at_least_medium(severity: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index("medium")


class Audit:
    """Writes events to the store and counts each session's medium-or-worse violations."""

    def __init__(self, store: Store, clock: Callable[[], float], threshold: int, window: float):
        self.store, self.clock = store, clock
        self.threshold, self.window = threshold, window
        self._violations: dict[str, WindowCounter] = {}
        self.listeners: list[Callable[[str, str, str], None]] = []  # (kind, type, severity): metrics

    def event(self, kind: str, type_: str, severity: str = "info", details: dict | None = None,
              **where: Any) -> None:
        """Record one event (kind: session, connection, document, security, system)."""
        self.store.record_event(iso(self.clock()), kind, type_, severity, details, **where)
        for listener in self.listeners:
            listener(kind, type_, severity)

    def security(self, type_: str, severity: str | None = None, details: dict | None = None,
                 **where: Any) -> bool:
        """Record a security event; True when its session has now crossed the violation threshold."""
        severity = severity or SECURITY_TYPES.get(type_, "medium")
        self.event("security", type_, severity, details, **where)
        session_id = where.get("session_id")
        if not session_id or not _at_least_medium(severity):
            return False
        counter = self._violations.setdefault(session_id, WindowCounter(self.window))
        return counter.hit(self.clock()) >= self.threshold

    def forget(self, session_id: str) -> None:
        """Drop a session's violation window (it ended)."""
        self._violations.pop(session_id, None)

    def prune(self) -> None:
        """Drop empty violation windows."""
        now = self.clock()
        for key in [k for k, c in self._violations.items() if c.count(now) == 0]:
            del self._violations[key]
