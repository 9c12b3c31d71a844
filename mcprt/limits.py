"""Limits: the one owner of every rate and count limit (per-session message buckets, session creation per
address, connection caps, document quotas and probes, coalesced refusals), on the injected clock."""

from __future__ import annotations

from typing import Callable, Iterable

from .config import Settings
from .documents import DocumentQuota
from .protocol import AppError, ErrorCode
from .ratelimit import Buckets, KeyedWindows, TokenBucket, seconds

NOTICE_WINDOW = 1.0  # at most one RATE_LIMITED reply (and event) per connection per second
SYNC_RATE, SYNC_BURST = 2.0, 10  # sync answers per connection (each may be a whole document_state)


class Notices:
    """Coalesces refusals: one notice per window, saying how many were refused since the last one."""

    __slots__ = ("window", "last", "dropped")

    def __init__(self, window: float = NOTICE_WINDOW):
        self.window, self.last, self.dropped = window, -1e18, 0

    def refused(self, now: float) -> int | None:
        """Count one refusal; the count to report when a notice is due now, else None."""
        self.dropped += 1
        if now - self.last < self.window:
            return None
        self.last, dropped, self.dropped = now, self.dropped, 0
        return dropped


class Limits:
    """What one session, address or server may do, and how fast."""

    def __init__(self, settings: Settings, clock: Callable[[], float]):
        self.settings, self.clock = settings, clock
        self.buckets = Buckets(settings.rate_limit, settings.rate_burst)
        self.session_creates = KeyedWindows(60.0, settings.session_create_limit)
        self.probes = KeyedWindows(60.0, settings.document_probe_limit)
        self.documents = DocumentQuota(settings.max_documents, settings.document_create_limit)
        self.on_spend: Callable[[str], None] | None = None  # cluster mode: a session spent a message here

    def bucket(self, session_id: str) -> TokenBucket:
        """The message bucket a session's sockets share (it outlives them: reconnecting does not refill it)."""
        return self.buckets.get(session_id, self.clock())

    def sync_bucket(self) -> TokenBucket:
        """A connection's own bucket of sync answers."""
        return TokenBucket(SYNC_RATE, SYNC_BURST, self.clock())

    def message(self, bucket: TokenBucket) -> bool:
        """Spend one message from a bucket; False over the limit."""
        return bucket.take(self.clock())

    def session_message(self, session_id: str, bucket: TokenBucket) -> bool:
        """Spend one of a session's messages; False over the limit. Cluster mode counts it for the others."""
        if not bucket.take(self.clock()):
            return False
        if self.on_spend is not None:
            self.on_spend(session_id)
        return True

    def retry_after_ms(self, bucket: TokenBucket) -> int:
        """Milliseconds until the bucket holds a message again."""
        return max(1, int(1000 * (1.0 - bucket.tokens) / bucket.rate)) if bucket.rate > 0 else 1000

    def message_limit(self, dropped: int) -> dict:
        """The details of a RATE_LIMITED reply to messages."""
        return {"rate_per_second": self.settings.rate_limit, "burst": self.settings.rate_burst, "dropped": dropped}

    def check_connection(self, session_connections: int, total: int) -> None:
        """RATE_LIMITED when a session or the server already holds its cap of sockets."""
        if session_connections >= self.settings.max_connections_per_session \
                or total >= self.settings.max_connections:
            raise AppError(ErrorCode.RATE_LIMITED, "too many connections for this session or server",
                           {"per_session": self.settings.max_connections_per_session})

    def create_session(self, addr: str | None) -> None:
        """Count a session creation from an address, or RATE_LIMITED (with retry_after in seconds)."""
        now = self.clock()
        if not self.session_creates.allow(addr or "-", now):
            raise AppError(ErrorCode.RATE_LIMITED, "too many sessions created from this address; slow down",
                           {"limit_per_minute": self.session_creates.limit,
                            "retry_after": seconds(self.session_creates.wait([addr or "-"], now))})

    def probing(self, key: str) -> bool:
        """True while a session is over its NOT_FOUND limit for the minute."""
        return self.probes.count(key, self.clock()) >= self.probes.limit

    def probe_wait(self, key: str) -> int:
        """Whole seconds until a session over its NOT_FOUND limit may ask again."""
        return seconds(self.probes.wait([key], self.clock()))

    def probed(self, key: str) -> bool:
        """Count a NOT_FOUND for a session; True when this one reached the limit (record it once)."""
        return self.probes.hit(key, self.clock()) == self.probes.limit

    def prune(self, live_sessions: Iterable[str]) -> None:
        """Forget idle windows and refilled buckets (bounded memory)."""
        now = self.clock()
        self.session_creates.prune(now)
        self.probes.prune(now)
        self.documents.prune(now)
        self.buckets.prune(now, keep=frozenset(live_sessions))
