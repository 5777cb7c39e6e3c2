"""Rate limits of sensors: a token bucket per limited sensor (a webhook's `rateLimit:`).

`per_second` tokens drip in each second up to `burst`; a delivery takes one. When none is left
the caller answers 429 with Retry-After set to the seconds until the next token. Time is an
argument (`now`, seconds on any monotonic scale), so the arithmetic is tested without waiting.

A sensor takes its tokens from the `RateLimits` its context lends it: `ProcessRateLimits`
keeps the buckets in the process; an intake worker's are the main process's, so that every
worker answering one endpoint draws from that endpoint's one bucket. This module does not
answer requests or read a clock.
"""

from __future__ import annotations

import math
from typing import Protocol


class TokenBucket:
    """`burst` deliveries at once, `per_second` sustained; full when created."""

    def __init__(self, per_second: float, burst: int, now: float) -> None:
        if not per_second > 0 or not math.isfinite(per_second):
            raise ValueError(f"per_second: {per_second!r} is not a positive number")
        if burst < 1:
            raise ValueError(f"burst: {burst!r} is not a positive number of deliveries")
        self.per_second = per_second
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is available."""
        # A clock that went backwards adds nothing rather than taking tokens away.
        elapsed = max(0.0, now - self._at)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.per_second)
        self._at = max(self._at, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.per_second


def retry_after(wait: float) -> str:
    """The Retry-After value for a wait in seconds: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))


class RateLimits(Protocol):
    async def take(self, key: str, per_second: float, burst: int, now: float) -> float:
        """Take a token from bucket `key` (`per_second` sustained, `burst` at once): 0.0
        when granted, else the seconds until one is available."""
        ...


class ProcessRateLimits:
    """The buckets of one process by key; a key whose rate changed gets a new, full bucket."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    async def take(self, key: str, per_second: float, burst: int, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None or (bucket.per_second, bucket.burst) != (per_second, burst):
            bucket = self._buckets[key] = TokenBucket(per_second, burst, now)
        return bucket.take(now)
