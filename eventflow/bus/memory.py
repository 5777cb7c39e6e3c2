"""The in-process bus of the embedded mode.

It holds events in memory: an event is "on the bus" once it is queued, and a consumer group
sees each event once, redelivered after a nak. A graceful stop drains it (see `drain`), but a
crash loses what the engine had not yet stored: use the NATS or Kafka bus where that matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from eventflow.errors import BusUnavailableError
from eventflow.events import ReceivedEvent


@dataclass(slots=True)
class _Entry:
    event: ReceivedEvent
    attempt: int = 1


@dataclass(slots=True)
class MemoryDelivery:
    _entry: _Entry
    _group: _Group
    _settled: bool = False

    @property
    def event(self) -> ReceivedEvent:
        return self._entry.event

    @property
    def attempt(self) -> int:
        return self._entry.attempt

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._group.settle()

    async def nak(self, delay: float = 0.0) -> None:
        if self._settled:
            return
        self._settled = True
        entry = _Entry(self._entry.event, self._entry.attempt + 1)
        if delay <= 0:
            self._group.requeue(entry)
        else:
            loop = asyncio.get_running_loop()
            loop.call_later(delay, self._group.requeue, entry)


@dataclass(slots=True)
class _Group:
    queue: asyncio.Queue[_Entry] = field(default_factory=asyncio.Queue)
    unsettled: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def put(self, entry: _Entry) -> None:
        self.unsettled += 1
        self.idle.clear()
        self.queue.put_nowait(entry)

    def requeue(self, entry: _Entry) -> None:
        self.queue.put_nowait(entry)

    def settle(self) -> None:
        self.unsettled -= 1
        if self.unsettled == 0:
            self.idle.set()


class MemoryBus:
    """Fan-out to consumer groups; within a group, one consumer gets each event."""

    def __init__(self, max_pending: int = 100_000) -> None:
        self._groups: dict[str, _Group] = {}
        self._backlog: list[ReceivedEvent] = []
        self._max_pending = max_pending
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    @property
    def connected(self) -> bool:
        """In-process: always reachable while not closed."""
        return not self._closed

    async def publish(self, event: ReceivedEvent) -> None:
        if self._closed:
            raise BusUnavailableError("the bus is stopping; send the event again shortly")
        if not self._groups:
            # No consumer subscribed yet (start-up): keep the event for the first group.
            if len(self._backlog) >= self._max_pending:
                raise BusUnavailableError("the bus is full; send the event again shortly")
            self._backlog.append(event)
            return
        for group in self._groups.values():
            if group.unsettled >= self._max_pending:
                raise BusUnavailableError("the bus is full; send the event again shortly")
        for group in self._groups.values():
            group.put(_Entry(event))

    async def subscribe(self, group: str) -> AsyncIterator[MemoryDelivery]:
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Group()
            for event in self._backlog:
                state.put(_Entry(event))
            self._backlog.clear()
        while True:
            entry = await state.queue.get()
            yield MemoryDelivery(entry, state)

    async def drain(self, grace_seconds: float) -> bool:
        try:
            async with asyncio.timeout(grace_seconds):
                for group in list(self._groups.values()):
                    await group.idle.wait()
        except TimeoutError:
            return False
        return True
