"""Token buckets and sliding-window counters; the time is always passed in, never read here."""

from __future__ import annotations

import math
from collections import deque


class TokenBucket:
    """`rate` tokens a second up to `burst`; take() spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if available; False means over the limit."""
        if now > self.stamp:  # a clock stepping back and forth again earns nothing
            tokens = self.tokens + (now - self.stamp) * self.rate
            self.tokens, self.stamp = tokens if tokens < self.burst else float(self.burst), now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


    def debit(self, now: float, cost: float) -> None:
        """Spend `cost` tokens spent elsewhere (another node, on the same session): the bucket may go
        below zero, never below -burst (a long absence here is not a long debt)."""
        self.take(now, 0.0)
        self.tokens = max(-float(self.burst), self.tokens - cost)


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


def seconds(wait: float) -> int:
    """A wait as a Retry-After value: whole seconds, rounded up, at least one."""
    return max(1, math.ceil(wait))


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

    def allow_all(self, keys, now: float) -> bool:
        """Count a hit for every key, or for none when one of them is over `limit` already."""
        counters = [self._counters.setdefault(key, WindowCounter(self.window)) for key in keys]
        if any(c.count(now) >= self.limit for c in counters):
            return False
        for counter in counters:
            counter.hit(now)
        return True

    def wait(self, keys, now: float) -> float:
        """Seconds until every one of `keys` is under `limit` again (0 when they are)."""
        waits = [0.0]
        for key in keys:
            counter = self._counters.get(key)
            if counter is not None and counter.count(now) >= self.limit:
                waits.append(counter.hits[counter.count(now) - self.limit] + self.window - now)
        return max(waits)

    def count(self, key: str, now: float) -> int:
        """Hits of `key` inside the window."""
        counter = self._counters.get(key)
        return counter.count(now) if counter else 0

    def hit(self, key: str, now: float) -> int:
        """Count a hit for `key` whatever the limit; return the hits inside the window."""
        return self._counters.setdefault(key, WindowCounter(self.window)).hit(now)

    def prune(self, now: float) -> None:
        """Forget keys with no hits in the window (bounded memory)."""
        for key in [k for k, c in self._counters.items() if c.count(now) == 0]:
            del self._counters[key]


class Buckets:
    """A TokenBucket per key (a session) that outlives the key's connections: reconnecting does not
    refill it. A bucket that has refilled is the same as a new one, so prune() drops it."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}

    def get(self, key: str, now: float) -> TokenBucket:
        """The key's bucket, made full the first time."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket

    def prune(self, now: float, keep=frozenset()) -> None:
        """Drop the buckets that are full again by `now`, except those of keys in `keep`."""
        for key, b in list(self._buckets.items()):
            if key not in keep and b.tokens + max(0.0, now - b.stamp) * b.rate >= b.burst:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
