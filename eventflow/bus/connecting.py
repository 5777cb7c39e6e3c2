"""Bringing a bus up while its broker may be down, and saying why it cannot take events.

`eventflow serve` must start (HTTP listener, /readyz, webhooks answering 503) even when the
broker is unreachable. `BusConnector` starts the bus in the background, retrying with capped
exponential backoff, and calls `on_up` once: that is when the service starts what reads or
writes the bus (the dispatcher and the stream sensors), so a stream sensor does not take
from its source what the bus could not hold. `unavailable_reason` is what /readyz reports,
also when a connected bus later loses its broker.

A ConfigError (a stream with the wrong storage, a broker refusing the producer) is retried
as well, at the longest delay: an operator may fix the broker without restarting eventflow,
and /readyz shows the message meanwhile. This module does not publish or consume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import structlog

from eventflow.bus.protocol import EventBus
from eventflow.errors import ConfigError, TemporaryError

log = structlog.get_logger()

BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


def backoff_delays(
    initial: float = BACKOFF_INITIAL_SECONDS, cap: float = BACKOFF_MAX_SECONDS
) -> Iterator[float]:
    """Delays between connection attempts: `initial`, doubled each time, never above `cap`."""
    delay = min(initial, cap)
    while True:
        yield delay
        delay = min(delay * 2, cap)


def unavailable_reason(url: str, up: bool, connected: bool, last_error: str | None) -> str | None:
    """Why the bus at `url` cannot take events now, or None when it can."""
    if not up:
        cause = last_error or "connecting"
        return f"bus {url} unreachable: {cause}"
    if not connected:
        return f"bus {url} unreachable: connection lost, reconnecting"
    return None


class BusConnector:
    """Starts `bus`, retrying until it succeeds or `run` is cancelled; then calls `on_up`."""

    def __init__(
        self,
        bus: EventBus,
        url: str,
        on_up: Callable[[], None],
        *,
        initial_delay: float = BACKOFF_INITIAL_SECONDS,
        max_delay: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        self._bus = bus
        self._url = url
        self._on_up = on_up
        self._initial = initial_delay
        self._max = max_delay
        self.up = asyncio.Event()
        self.last_error: str | None = None

    @property
    def reason(self) -> str | None:
        """Why the bus cannot take events now (for /readyz), or None when it can."""
        connected = self.up.is_set() and self._bus.connected
        return unavailable_reason(self._url, self.up.is_set(), connected, self.last_error)

    async def run(self) -> None:
        delays = backoff_delays(self._initial, self._max)
        attempt = 1
        while True:
            try:
                await self._bus.start()
            except (TemporaryError, ConfigError) as error:
                self.last_error = str(error)
                delay = self._max if isinstance(error, ConfigError) else next(delays)
                log.warning(
                    "bus not connected",
                    url=self._url,
                    attempt=attempt,
                    retry_in=delay,
                    error=self.last_error,
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self.last_error = None
            self.up.set()
            log.info("bus connected", url=self._url, attempts=attempt)
            self._on_up()
            return
