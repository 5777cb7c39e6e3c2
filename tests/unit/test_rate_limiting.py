"""The webhook rate limit's token bucket, on time given as an argument."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventflow.sensing.limiting import ProcessRateLimits, TokenBucket, retry_after
from sensors.webhook.config import RateLimitConfig


def test_a_full_bucket_grants_burst_deliveries_then_says_how_long_to_wait() -> None:
    """burst 3 at 2/s: three granted at once, the fourth waits half a second."""
    bucket = TokenBucket(per_second=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)


def test_tokens_drip_in_at_the_rate_and_never_above_burst() -> None:
    """After 0.25 s at 2/s half a token is back; after an hour only burst tokens are."""
    bucket = TokenBucket(per_second=2.0, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert [bucket.take(3600.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take(3600.0) > 0


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    """Time before the last take counts as no time at all."""
    bucket = TokenBucket(per_second=1.0, burst=1, now=50.0)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(10.0) == pytest.approx(1.0)
    assert bucket.take(50.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("per_second", "burst", "message"),
    [
        (0.0, 1, "per_second: 0.0 is not a positive number"),
        (float("nan"), 1, "per_second: nan is not a positive number"),
        (float("inf"), 1, "per_second: inf is not a positive number"),
        (1.0, 0, "burst: 0 is not a positive number of deliveries"),
    ],
)
def test_a_bucket_that_could_never_grant_is_refused(
    per_second: float, burst: int, message: str
) -> None:
    """Zero, NaN or infinite rates and an empty burst are errors, not silent outages."""
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.") + "$"):
        TokenBucket(per_second, burst, now=0.0)


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.9, "60")])
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(wait: float, header: str) -> None:
    """A sender retrying after Retry-After seconds finds a token."""
    assert retry_after(wait) == header


@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 50),
    times=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=60).map(sorted),
)
def test_granted_deliveries_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst: int, times: list[float]
) -> None:
    """Over any run of takes, grants <= burst + rate * (last - first)."""
    bucket = TokenBucket(rate, burst, now=times[0])
    granted = sum(1 for now in times if bucket.take(now) == 0.0)
    assert granted <= burst + rate * (times[-1] - times[0]) + 1e-9


def test_burst_defaults_to_the_rate_rounded_up() -> None:
    """rateLimit {perSecond: 2.5} allows 3 at once; an explicit burst wins."""
    assert RateLimitConfig.model_validate({"perSecond": 2.5}).bucket_size == 3
    assert RateLimitConfig.model_validate({"perSecond": 0.2}).bucket_size == 1
    assert RateLimitConfig.model_validate({"perSecond": 2.5, "burst": 10}).bucket_size == 10


async def test_process_rate_limits_keep_one_bucket_per_key_until_its_rate_changes():
    """Two keys draw from two buckets; a key whose rate changed starts again full."""
    limits = ProcessRateLimits()
    assert [await limits.take("a", 1.0, 2, 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert await limits.take("b", 1.0, 2, 0.0) == 0.0
    assert await limits.take("a", 1.0, 2, 0.5) == 0.5
    assert [await limits.take("a", 2.0, 1, 0.5) for _ in range(2)] == [0.0, 0.5]
