"""The EventBus seam. Every implementation (memory, nats, kafka) keeps the same contract:

- `publish` returns only once the bus holds the event (for durable buses: after the ack);
  it raises BusUnavailableError when it cannot.
- `start` raises BusUnavailableError when the broker cannot be reached (the service retries
  it, see `connecting.py`); `connected` says whether a started bus reaches its broker now.
- `subscribe(group)` yields deliveries; consumers in one group share the work. A delivery
  that is neither acked nor nak'ed is redelivered; `nak(delay)` asks for redelivery later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


class Publisher(Protocol):
    """What intake needs of a bus: an intake worker's channel to the main process is one."""

    async def publish(self, event: ReceivedEvent) -> None: ...


class EventBus(Publisher, Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def connected(self) -> bool:
        """Whether the bus is started and reaches its broker now (for /readyz)."""
        ...

    def subscribe(self, group: str) -> AsyncIterator[Delivery]: ...

    async def drain(self, grace_seconds: float) -> bool:
        """Wait until every published event is acked; False if `grace_seconds` passed first."""
        ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the engine could not take: where it was, why it left, and its bytes."""

    seq: int  # its number among the dead letters: what `replay_dead_letter` takes
    subject: str  # where it was on the bus (subject or topic), where a replay puts it back
    reason: str
    payload: bytes


@runtime_checkable
class KeepsDeadLetters(Protocol):
    """Optional: a bus that sets aside events it could not deliver, to be listed and replayed."""

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters still kept."""
        ...

    async def replay_dead_letter(self, seq: int) -> None:
        """Put dead letter `seq` back on the bus; PermanentError if there is none such."""
        ...
