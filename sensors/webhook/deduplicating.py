"""Redelivery dedupe for a webhook endpoint: which delivery keys were seen, and by which event.

A provider that timed out waiting for our answer sends the same delivery again. The first
event published for a key is remembered in the sensor's state (space "seen", value the event
id) for the endpoint's window; a redelivery within it is not published again. A key is recorded
only after its event is on the bus (promise 1): a crash in between lets the redelivery through,
and the engine's run dedupe absorbs it because the event keeps its id. Two copies of a delivery
arriving at once are taken one after the other (a lock per key), so the second sees the first.
Reads and writes of many requests are batched into one query and one transaction each.

The state being unreachable does not refuse deliveries: the event is still kept, and the
engine's run dedupe still holds. This module does not parse requests or answer them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType

import structlog

from eventflow.sensing.protocol import SensorState

log = structlog.get_logger()

SPACE = "seen"


class DeliveryLedger:
    """The delivery keys an endpoint has published, remembered for `window_seconds`.

    Under load many requests need the state at once: their reads are served by one query
    and their writes by one transaction (a group commit), the next batch gathering while the
    current one runs. A key recorded but not yet written answers from memory meanwhile.
    """

    def __init__(self, sensor: str, state: SensorState, window_seconds: float) -> None:
        self._sensor = sensor
        self._state = state
        self._window = timedelta(seconds=window_seconds)
        # A held key -> the copies waiting for it, in order (None: none yet); a free key is
        # absent. A lock per key as a dict entry: most keys are never contended, and an
        # asyncio.Lock each cost a delivery more than the rest of its hold.
        self._held: dict[str, list[asyncio.Future[None]] | None] = {}
        # Recorded, not yet committed to the state: key -> (event id, expiry).
        self._unwritten: dict[str, tuple[str, datetime]] = {}
        self._to_write: dict[str, tuple[str, datetime]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._reads: list[tuple[list[str], asyncio.Future[dict[str, str]]]] = []
        self._reader: asyncio.Task[None] | None = None

    def holding(self, keys: Sequence[str], now: datetime) -> _Holding:
        """Hold `keys` against concurrent copies (`async with`); it yields the ones seen and
        live at `now` -> the event id published for them."""
        return _Holding(self, keys, now)

    async def _take(self, key: str) -> None:
        if key not in self._held:
            self._held[key] = None
            return
        handed_over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._held[key]
        if waiters is None:
            self._held[key] = [handed_over]
        else:
            waiters.append(handed_over)
        try:
            await handed_over
        except asyncio.CancelledError:
            # Handed over just as the wait was cancelled: pass it on. (A cancelled waiter
            # stays listed, done: `_release` skips it.)
            if handed_over.done() and not handed_over.cancelled():
                self._release(key)
            raise

    def _release(self, key: str) -> None:
        """Hand `key` to its first waiter still waiting, or free it."""
        waiters = self._held[key]
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
        del self._held[key]

    async def _seen(self, keys: Sequence[str], now: datetime) -> dict[str, str]:
        # A key stays in _unwritten until its write committed, so it is always found here
        # or in the state: the lock on it is held from before `record` until after.
        unwritten = [(key, self._unwritten.get(key)) for key in keys]
        found = {key: entry[0] for key, entry in unwritten if entry is not None and entry[1] > now}
        rest = [key for key, entry in unwritten if entry is None]
        if not rest:
            return found
        answer: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._reads.append((rest, answer))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(
                self._read_batches(), name=f"sensor-{self._sensor}-dedupe-read"
            )
        return found | await answer

    async def _read_batches(self) -> None:
        while self._reads:
            batch, self._reads = self._reads, []
            keys = sorted({key for keys, _ in batch for key in keys})
            found: dict[str, str] = {}
            try:
                found = await self._state.get_many(SPACE, keys)
            except Exception as error:  # any store failure: the deliveries are still taken
                log.warning("dedupe state not readable", sensor=self._sensor, error=str(error))
            finally:
                # Even when cancelled: a waiting request goes on as if nothing was seen.
                for wanted, answer in batch:
                    if not answer.done():
                        answer.set_result({key: found[key] for key in wanted if key in found})

    def record(self, published: Mapping[str, str], now: datetime) -> None:
        """Remember `published` (key -> event id) until `now` + the window; written soon."""
        if not published:
            return
        expires_at = now + self._window
        entries = {key: (event_id, expires_at) for key, event_id in published.items()}
        self._unwritten.update(entries)
        self._to_write.update(entries)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(
                self._write_batches(), name=f"sensor-{self._sensor}-dedupe-write"
            )

    async def _write_batches(self) -> None:
        while self._to_write:
            batch, self._to_write = self._to_write, {}
            # One expiry for the batch: the latest, a few milliseconds more for the others.
            expires_at = max(expires for _, expires in batch.values())
            items = {key: event_id for key, (event_id, _) in batch.items()}
            try:
                await self._state.put_many(SPACE, items, expires_at=expires_at)
            except Exception as error:  # the events are on the bus; only their memory failed
                log.warning(
                    "dedupe state not written",
                    sensor=self._sensor,
                    keys=len(items),
                    error=str(error),
                )
            finally:
                for key in items:
                    if key not in self._to_write:
                        self._unwritten.pop(key, None)

    async def flush(self) -> None:
        """Wait until every recorded key is written (or its write failed)."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def purge(self, now: datetime) -> None:
        """Drop the keys whose window has passed."""
        try:
            purged = await self._state.purge_expired(now)
        except Exception as error:  # retried at the next purge
            log.warning("dedupe state not purged", sensor=self._sensor, error=str(error))
            return
        if purged:
            log.debug("dedupe keys purged", sensor=self._sensor, count=purged)


class _Holding:
    """`async with ledger.holding(keys, now) as seen`: the keys held for the block."""

    def __init__(self, ledger: DeliveryLedger, keys: Sequence[str], now: datetime) -> None:
        self._ledger = ledger
        # One global order, so that two requests cannot deadlock.
        self._keys = sorted(set(keys)) if len(keys) > 1 else list(keys)
        self._now = now
        self._taken = 0

    async def __aenter__(self) -> dict[str, str]:
        try:
            for key in self._keys:
                await self._ledger._take(key)
                self._taken += 1
            return await self._ledger._seen(self._keys, self._now)
        except BaseException:
            self._release()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        for key in self._keys[: self._taken]:
            self._ledger._release(key)
        self._taken = 0
