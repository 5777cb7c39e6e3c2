"""The EventBus seam. Every implementation (memory, nats, kafka) keeps the same contract:

- `publish` returns only once the bus holds the event (for durable buses: after the ack);
  it raises BusUnavailableError when it cannot.
- `subscribe(group)` yields deliveries; consumers in one group share the work. A delivery
  that is neither acked nor nak'ed is redelivered; `nak(delay)` asks for redelivery later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from eventflow.events import ReceivedEvent


class Delivery(Protocol):
    """One event handed to one consumer, to be acknowledged once its effects are stored."""

    @property
    def event(self) -> ReceivedEvent: ...

    @property
    def attempt(self) -> int:
        """1 for the first delivery, 2 for the first redelivery, and so on."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float = 0.0) -> None: ...


class EventBus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, event: ReceivedEvent) -> None: ...

    def subscribe(self, group: str) -> AsyncIterator[Delivery]: ...

    async def drain(self, grace_seconds: float) -> bool:
        """Wait until every published event is acked; False if `grace_seconds` passed first."""
        ...
