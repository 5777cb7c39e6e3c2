"""One engine replica's membership in the Kafka bus's consumer group (see kafka.py).

`KafkaMember` is the rebalance listener, the per-partition ledgers of what was handed out,
the background offset committer, and the dead letters of its partitions; `KafkaDelivery` is
one record handed to the engine. Offsets are committed only up to settled records (acked, or
dead-lettered once the dead letter is stored). This module does not read records or publish.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from eventflow.bus.kafka_dead_letters import dead_letter_key
from eventflow.bus.offsets import PartitionLedger
from eventflow.errors import BusUnavailableError
from eventflow.events import ReceivedEvent

log = structlog.get_logger()

_COMMIT_RETRY_SECONDS = 0.5
_DEAD_LETTER_RETRY_SECONDS = 1.0

StoreDeadLetter = Callable[[bytes, bytes | None, bytes, str], Awaitable[None]]
"""(payload, record key, source key, reason) -> stored; raises KafkaError or TimeoutError."""


class KafkaDelivery:
    """One record handed to one consumer; ack and nak are safe to repeat."""

    __slots__ = ("_attempt", "_event", "_ledger", "_offset", "_settled", "_sub", "_timer")

    def __init__(
        self,
        event: ReceivedEvent,
        attempt: int,
        subscription: KafkaMember,
        ledger: PartitionLedger,
        offset: int,
    ) -> None:
        self._event = event
        self._attempt = attempt
        self._sub = subscription
        self._ledger = ledger
        self._offset = offset
        self._settled = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def event(self) -> ReceivedEvent:
        return self._event

    @property
    def attempt(self) -> int:
        return self._attempt

    async def ack(self) -> None:
        # An ack after ack_wait still counts: the event's effects are stored either way.
        if self._timer is not None:
            self._timer.cancel()
        if not self._settled:
            self._settled = True
            self._ledger.settle(self._offset)
            self._sub.commit_soon()

    async def nak(self, delay: float = 0.0) -> None:
        if not self._settled:
            self._settled = True
            self._retry(delay)

    def _expire(self) -> None:
        """No ack within ack_wait: hand the event out again, as if the consumer had died."""
        if not self._settled:
            self._settled = True
            self._retry(0.0)

    def _retry(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        member = self._sub
        if self._attempt >= member.max_deliver:
            member.dead_letter_soon(
                self._ledger,
                self._offset,
                payload=self._event.encode(),
                key=member.key_of(self._event),
                reason=f"not acknowledged after {self._attempt} attempts",
            )
            return
        again = KafkaDelivery(self._event, self._attempt + 1, self._sub, self._ledger, self._offset)
        asyncio.get_running_loop().call_later(max(delay, 0.0), self._sub.redeliver, again)


class KafkaMember(ConsumerRebalanceListener):  # type: ignore[misc]
    """One member of a consumer group: its consumer, ledgers, committer and dead letters."""

    def __init__(
        self,
        consumer: Any,
        group: str,
        *,
        max_deliver: int,
        key_of: Callable[[ReceivedEvent], bytes],
        store_dead_letter: StoreDeadLetter,
    ) -> None:
        self.consumer = consumer
        self.group = group
        self.max_deliver = max_deliver
        self.key_of = key_of
        self._store_dead_letter = store_dead_letter
        self.chores: set[asyncio.Task[None]] = set()
        self.ledgers: dict[Any, PartitionLedger] = {}
        self.due: deque[KafkaDelivery] = deque()
        self.closed = False
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None

    def start_committer(self) -> None:
        self._committer = asyncio.create_task(self._committing(), name=f"kafka-commit-{self.group}")

    def current(self, delivery: KafkaDelivery) -> bool:
        """False once the delivery's partition was revoked: its ack can commit nothing."""
        return self.ledgers.get(delivery._ledger.tp) is delivery._ledger

    def redeliver(self, delivery: KafkaDelivery) -> None:
        if not self.closed and self.current(delivery):
            self.due.append(delivery)

    def commit_soon(self) -> None:
        self._dirty.set()

    def dead_letter_soon(
        self,
        ledger: PartitionLedger,
        offset: int,
        *,
        payload: bytes,
        key: bytes | None,
        reason: str,
    ) -> None:
        """Store the dead letter in the background; its offset is settled once it is stored."""
        source = dead_letter_key(ledger.tp.topic, ledger.tp.partition, offset)

        async def storing() -> None:
            while not self.closed and self.ledgers.get(ledger.tp) is ledger:
                try:
                    await self._store_dead_letter(payload, key, source, reason)
                except (KafkaError, TimeoutError, BusUnavailableError) as error:
                    log.warning(
                        "dead letter not stored, will retry", source=source, error=repr(error)
                    )
                    await asyncio.sleep(_DEAD_LETTER_RETRY_SECONDS)
                    continue
                ledger.settle(offset)
                self.commit_soon()
                return

        chore = asyncio.create_task(storing(), name=f"kafka-dead-letter-{offset}")
        self.chores.add(chore)
        chore.add_done_callback(self.chores.discard)

    def settled(self) -> bool:
        return not any(ledger.unsettled or ledger.dirty() for ledger in self.ledgers.values())

    async def commit(self) -> None:
        """Commit every partition whose commit point moved; raises KafkaError."""
        async with self._lock:
            wanted = {
                tp: ledger.commit_point() for tp, ledger in self.ledgers.items() if ledger.dirty()
            }
            if not wanted:
                return
            await self.consumer.commit(wanted)
            for tp, point in wanted.items():
                ledger = self.ledgers.get(tp)
                if ledger is not None:
                    ledger.committed = point

    async def _committing(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.commit()
            except KafkaError as error:
                log.warning("offset commit failed", group=self.group, error=repr(error))
                self._dirty.set()
                await asyncio.sleep(_COMMIT_RETRY_SECONDS)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Commit what is acked while the partitions are still ours; the rest is read again
        # by their next owner.
        try:
            async with asyncio.timeout(2.0):
                await self.commit()
        except (KafkaError, TimeoutError) as error:
            log.warning(
                "offset commit before rebalance failed", group=self.group, error=repr(error)
            )
        for tp in revoked:
            self.ledgers.pop(tp, None)
        log.info(
            "partitions revoked", group=self.group, partitions=sorted(str(tp) for tp in revoked)
        )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self.ledgers[tp] = PartitionLedger(tp)
        log.info(
            "partitions assigned", group=self.group, partitions=sorted(str(tp) for tp in assigned)
        )

    async def stop(self) -> None:
        """Commit what is acked, then leave the group; idempotent."""
        if self.closed:
            return
        self.closed = True
        for chore in self.chores:
            chore.cancel()  # a dead letter not yet stored: its record is read again
        await asyncio.gather(*self.chores, return_exceptions=True)
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        try:
            await self.commit()
        except KafkaError as error:
            log.warning("offset commit at close failed", group=self.group, error=repr(error))
        await self.consumer.stop()
