"""Security events with consistent types and severities, bounded fields, per-source coalescing, and the
violation windows (per session, or per client address before a session is known)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from .clock import iso
from .ratelimit import WindowCounter
from .storage.base import EVENT_WHERE, EventRecord, Store, event_written

security_log = logging.getLogger("mcprt.security")
_LOG_LEVEL = {"info": logging.INFO, "low": logging.INFO, "medium": logging.WARNING, "high": logging.ERROR,
              "critical": logging.CRITICAL}

SEVERITIES = ("info", "low", "medium", "high", "critical")
EVENT_KINDS = ("session", "security", "connection", "document", "system")

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
    "host_rejected": "medium",
    "connection_limit": "low",
    "abuse_disconnect": "high",
    "abuse_cooldown": "medium",
    "document_quota": "low",
    "document_probe": "medium",
    "events_suppressed": "low",
    "slow_consumer": "low",
    "token_refused": "medium",  # its severity follows the reason: TokenRefused.severity
    "forbidden_edit": "low",  # a viewer's client that sends edits: refused, not abuse
}

# What one event may store: an attacker controls most of these fields, and the log is on disk.
FIELD_LIMITS = {"session_id": 64, "user_id": 128, "document_id": 128, "connection_id": 32,
                "client_addr": 64, "user_agent": 256}
DETAIL_STRING_LIMIT = 300
DETAIL_ITEMS_LIMIT = 20
DETAIL_DEPTH_LIMIT = 4

# Per source (client address) and type: this many events a window are written; the rest are counted
# and written as one events_suppressed summary when the window has passed.
SOURCE_WINDOW = 60.0
SOURCE_LIMIT = 30
ABUSE_COOLDOWN = 10.0  # seconds a session may not reconnect after its first abuse disconnect; doubles after
MAX_TRACKED = 100_000  # windows held at most (sources, sessions); the oldest go first


def _at_least_medium(severity: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index("medium")


def cut(text: str, limit: int) -> str:
    """A string of at most `limit` characters, marked with … where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded(value: Any, depth: int = 0) -> Any:
    """Details as stored: strings cut, lists and objects shortened, nesting bounded."""
    if isinstance(value, str):
        return cut(value, DETAIL_STRING_LIMIT)
    if depth >= DETAIL_DEPTH_LIMIT and isinstance(value, (dict, list, tuple)):
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:DETAIL_ITEMS_LIMIT]
        return {cut(str(k), 64): bounded(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [bounded(v, depth + 1) for v in value[:DETAIL_ITEMS_LIMIT]]
    return value


def event_json(event: EventRecord) -> dict:
    """An event as the REST API and `events --json` show it (its time as RFC 3339 text)."""
    return {"id": event.id, "time": iso(event.time), "kind": event.kind, "type": event.type,
            "severity": event.severity, **{k: getattr(event, k) for k in EVENT_WHERE}, "details": event.details}


def bounded_where(where: dict) -> dict:
    """The who/where fields of an event, each cut to its limit (a session id that long is no session id)."""
    out = {}
    for key, value in where.items():
        if key not in EVENT_WHERE:
            continue
        if isinstance(value, str) and len(value) > FIELD_LIMITS.get(key, 128):
            value = value[:8] + "…" if key == "session_id" else cut(value, FIELD_LIMITS.get(key, 128))
        out[key] = value
    return out


class _Source:
    """One source's events of one type in the current window, and how many were not written."""

    __slots__ = ("start", "written", "suppressed", "where")

    def __init__(self, start: float):
        self.start, self.written, self.suppressed, self.where = start, 0, 0, {}


class Audit:
    """Writes events to the store and counts violations per session (or per address before one)."""

    def __init__(self, store: Store, clock: Callable[[], float], threshold: int, window: float,
                 source_limit: int = SOURCE_LIMIT):
        self.store, self.clock = store, clock
        self.threshold, self.window = threshold, window
        self.source_limit = source_limit
        self._violations: dict[str, WindowCounter] = {}
        self._sources: dict[tuple[str, str], _Source] = {}
        self._abuse: dict[str, WindowCounter] = {}  # abuse disconnects per session
        self._cooldowns: dict[str, float] = {}  # session -> time until which it may not reconnect
        self.listeners: list[Callable[[str, str, str], None]] = []  # (kind, type, severity): metrics

    def event(self, kind: str, type_: str, severity: str = "info", details: dict | None = None,
              **where: Any) -> None:
        """Record one event (kind: session, connection, document, security, system)."""
        self.store.enqueue(event_written(EventRecord(self.clock(), kind, type_, severity, bounded(details or {}),
                                                     **bounded_where(where))))
        for listener in self.listeners:
            listener(kind, type_, severity)

    def security(self, type_: str, severity: str | None = None, details: dict | None = None,
                 **where: Any) -> bool:
        """Record a security event; True when its session (or, without one, its address) has now crossed
        the violation threshold. Without a session (an attacker mints bogus credentials for free), past
        SOURCE_LIMIT a window from one address, events of a type are counted, not written, and summed up
        in one events_suppressed event."""
        severity = severity or SECURITY_TYPES.get(type_, "medium")
        if self._admit(type_, where):
            self.event("security", type_, severity, details, **where)
            _log_security(type_, severity, details or {}, where)
        else:
            for listener in self.listeners:
                listener("security", type_, severity)
        if not _at_least_medium(severity):
            return False
        return self.violation(self._violator(where))

    def violation(self, key: str | None) -> bool:
        """Count one violation for a key; True once the key is at the threshold within the window."""
        if not key:
            return False
        counter = self._violations.get(key)
        if counter is None:
            self._bound(self._violations)
            counter = self._violations[key] = WindowCounter(self.window)
        return counter.hit(self.clock()) >= self.threshold

    def violations(self, key: str) -> int:
        """Violations counted for a key within the window."""
        counter = self._violations.get(key)
        return counter.count(self.clock()) if counter else 0

    @staticmethod
    def _violator(where: dict) -> str | None:
        """Whose violation this is: the session when one is known, else the client address (an attacker
        can mint bogus session ids without limit, not addresses)."""
        if where.get("session_id"):
            return where["session_id"]
        return f"addr:{where['client_addr']}" if where.get("client_addr") else None

    def address_blocked(self, addr: str | None) -> bool:
        """True while an address is over the violation threshold (its failures are refused early)."""
        return bool(addr) and self.violations(f"addr:{addr}") >= self.threshold

    def _admit(self, type_: str, where: dict) -> bool:
        addr = where.get("client_addr")
        if not addr or where.get("session_id"):
            return True  # a session's own events are bounded by its violation window and rate limit
        now = self.clock()
        key = (addr, type_)
        source = self._sources.get(key)
        if source is None or now - source.start >= SOURCE_WINDOW:
            if source is not None and source.suppressed:
                self._summarize(key, source)
            self._bound(self._sources)
            source = self._sources[key] = _Source(now)
        if source.written < self.source_limit:
            source.written += 1
            return True
        source.suppressed += 1
        source.where = where
        return False

    def _summarize(self, key: tuple[str, str], source: _Source) -> None:
        self.event("security", "events_suppressed", SECURITY_TYPES["events_suppressed"],
                   {"type": key[1], "suppressed": source.suppressed, "written": source.written,
                    "window_seconds": SOURCE_WINDOW}, **source.where)

    @staticmethod
    def _bound(table: dict) -> None:
        if len(table) >= MAX_TRACKED:
            del table[next(iter(table))]  # dicts keep insertion order: the oldest entry

    def abused(self, session_id: str) -> tuple[int, float]:
        """Count an abuse disconnect of a session: (how many within the window, the cool-down it earns)."""
        counter = self._abuse.get(session_id)
        if counter is None:
            self._bound(self._abuse)
            counter = self._abuse[session_id] = WindowCounter(self.window)
        now = self.clock()
        count = counter.hit(now)
        cooldown = ABUSE_COOLDOWN * 2 ** (count - 1)
        self._bound(self._cooldowns)
        self._cooldowns[session_id] = now + cooldown
        return count, cooldown

    def cooldown_left(self, session_id: str) -> float:
        """Seconds before a session disconnected for abuse may reconnect (0: it may)."""
        until = self._cooldowns.get(session_id)
        return max(0.0, until - self.clock()) if until is not None else 0.0

    def forget(self, session_id: str) -> None:
        """Drop a session's violation window (it ended)."""
        self._violations.pop(session_id, None)

    def prune(self) -> None:
        """Drop empty violation windows; write the summaries of source windows that have passed."""
        now = self.clock()
        for table in (self._violations, self._abuse):
            for key in [k for k, c in table.items() if c.count(now) == 0]:
                del table[key]
        for key in [k for k, until in self._cooldowns.items() if until <= now]:
            del self._cooldowns[key]
        for key, source in [(k, s) for k, s in self._sources.items() if now - s.start >= SOURCE_WINDOW]:
            if source.suppressed:
                self._summarize(key, source)
            del self._sources[key]


TAIL_GAP_WAIT = 5.0  # seconds a missing id is waited for before the tail moves past it


class EventTail:
    """Follows the event log by id without missing rows committed out of id order. Ids come from one
    sequence, taken when a row is inserted, so with several writers (nodes on one PostgreSQL) id 41 may
    commit after id 42. The tail asks for ids above its low-water mark, shows each id once, and moves
    the mark past a missing id only once the id has been missing for TAIL_GAP_WAIT (a transaction that
    never commits, or a sequence value never used, leaves a gap for good)."""

    def __init__(self, after: int, clock: Callable[[], float] = time.monotonic):
        self.after = after  # every id at or below it was shown or given up on
        self.clock = clock
        self._seen: set[int] = set()  # ids above `after` shown already
        self._missing: dict[int, float] = {}  # id -> when it was first seen missing

    def take(self, events: list) -> list:
        """The events not shown yet (oldest first), and the mark moved as far as it may."""
        fresh = [e for e in events if e.id > self.after and e.id not in self._seen]
        self._seen.update(e.id for e in fresh)
        now, top = self.clock(), max(self._seen, default=self.after)
        while self.after < top:
            nxt = self.after + 1
            if nxt in self._seen:
                self._seen.discard(nxt)
            elif now - self._missing.setdefault(nxt, now) < TAIL_GAP_WAIT:
                break
            else:
                del self._missing[nxt]
            self.after = nxt
        return fresh


def _log_security(type_: str, severity: str, details: dict, where: dict) -> None:
    """Each recorded security event in the server log too, at its severity, for a log shipper or SIEM
    (a session id shows only its first 8 characters, as everywhere in the log)."""
    level = _LOG_LEVEL.get(severity, logging.WARNING)
    if not security_log.isEnabledFor(level):
        return
    session = where.get("session_id")
    fields = " ".join(f"{name}={value}" for name, value in (
        ("session", f"{session[:8]}…" if session else None), ("user", where.get("user_id")),
        ("doc", where.get("document_id")), ("addr", where.get("client_addr"))) if value)
    security_log.log(level, "security %s (%s) %s %s", type_, severity, fields,
                     json.dumps(bounded(details), ensure_ascii=False, default=str)[:400])
