"""Token buckets and sliding-window counters; the time is always passed in, never read here."""

from __future__ import annotations

from collections import deque


class TokenBucket:
    """`rate` tokens a second up to `burst`; take() spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if available; False means over the limit."""
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class WindowCounter:
    """How many hits fell in the last `window` seconds."""

    __slots__ = ("window", "hits")

    def __init__(self, window: float):
        self.window = window
        self.hits: deque[float] = deque()

    def hit(self, now: float) -> int:
        """Count one hit at `now`; return the hits now inside the window."""
        self.hits.append(now)
        return self.count(now)

    def count(self, now: float) -> int:
        """Hits inside the window ending at `now`."""
        while self.hits and self.hits[0] <= now - self.window:
            self.hits.popleft()
        return len(self.hits)


class KeyedWindows:
    """A WindowCounter per key (e.g. per client address), with idle keys dropped."""

    def __init__(self, window: float, limit: int):
        self.window, self.limit = window, limit
        self._counters: dict[str, WindowCounter] = {}

    def allow(self, key: str, now: float) -> bool:
        """Count a hit for `key`; False once the key is over `limit` in the window."""
        counter = self._counters.setdefault(key, WindowCounter(self.window))
        if counter.count(now) >= self.limit:
            return False
        counter.hit(now)
        return True

    def prune(self, now: float) -> None:
        """Forget keys with no hits in the window (bounded memory)."""
        for key in [k for k, c in self._counters.items() if c.count(now) == 0]:
            del self._counters[key]
