"""A token bucket: the pure core of a webhook endpoint's rate limit (`rateLimit:`).

`per_second` tokens drip in each second up to `burst`; a delivery takes one. When none is left
the caller answers 429 with Retry-After set to the seconds until the next token. Time is an
argument (`now`, seconds on any monotonic scale), so the arithmetic is tested without waiting.
This module does not answer requests or read a clock.
"""

from __future__ import annotations

import math


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
