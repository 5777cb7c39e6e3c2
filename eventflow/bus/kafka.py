"""The durable bus on Kafka (aiokafka): one topic, the engine as one consumer group.

Events are keyed by a correlation key (the subject by default) so related events land on one
partition and stay in order. `publish` returns after the broker's ack (acks=all, idempotent
producer). Each `subscribe(group)` is one member of consumer group `<topic>.<group>`: replicas
that subscribe with the same group share the partitions.

Offsets are committed only for acked deliveries and in order per partition: offset N+1 is
committed once every delivery up to N of that partition is settled, so a delivery left
unacked (a crash, a revoked partition) is read again by whoever owns the partition next.
Within one consumer, `nak(delay)` and an ack that does not come within `ack_wait_seconds`
re-yield the event locally (attempt + 1) without holding back other events. Kafka keeps no
delivery count, so `attempt` counts deliveries by this consumer: after a restart it starts
again at 1.

This module does not retry a failed publish (the sensor's source resends), keeps no dead
letters (an undecodable payload is logged, counted and skipped), and does not decide what an
event means.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Literal

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from eventflow.bus.offsets import PartitionLedger
from eventflow.errors import BusUnavailableError, ConfigError, InvalidEventError
from eventflow.events import ReceivedEvent

log = structlog.get_logger()

KeyChoice = Literal["subject", "sensor", "id"]
STRUCTURED_CONTENT_TYPE = b"application/cloudevents+json; charset=UTF-8"
# How long the consumer waits for records before it looks at due redeliveries again:
# the bound on how late a nak(delay) comes back.
_POLL_SECONDS = 0.1
_DRAIN_POLL_SECONDS = 0.02
_COMMIT_RETRY_SECONDS = 0.5


class KafkaDelivery:
    """One record handed to one consumer; ack and nak are safe to repeat."""

    __slots__ = ("_attempt", "_event", "_ledger", "_offset", "_settled", "_sub", "_timer")

    def __init__(
        self,
        event: ReceivedEvent,
        attempt: int,
        subscription: _Subscription,
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
        again = KafkaDelivery(self._event, self._attempt + 1, self._sub, self._ledger, self._offset)
        asyncio.get_running_loop().call_later(max(delay, 0.0), self._sub.redeliver, again)


class _Subscription(ConsumerRebalanceListener):  # type: ignore[misc]
    """One member of a consumer group: its consumer, ledgers and background committer."""

    def __init__(self, consumer: Any, group: str) -> None:
        self.consumer = consumer
        self.group = group
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
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        try:
            await self.commit()
        except KafkaError as error:
            log.warning("offset commit at close failed", group=self.group, error=repr(error))
        await self.consumer.stop()


class KafkaBus:
    """The EventBus on one Kafka topic; `start` creates the topic or checks it."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "eventflow.events",
        partitions: int = 6,
        replication_factor: int = 1,
        acks: Literal["all", 1, 0] = "all",
        idempotent: bool = True,
        max_in_flight: int = 1024,
        key: KeyChoice = "subject",
        publish_timeout_seconds: float = 5.0,
        connect_timeout_seconds: float = 10.0,
        ack_wait_seconds: float = 30.0,
        session_timeout_seconds: float = 10.0,
        heartbeat_interval_seconds: float = 1.0,
        fetch_batch: int = 256,
    ) -> None:
        for name, value in (
            ("partitions", partitions),
            ("replication_factor", replication_factor),
            ("max_in_flight", max_in_flight),
            ("fetch_batch", fetch_batch),
        ):
            if value < 1:
                raise ConfigError(f"bus: {name}: {value} is not accepted; use 1 or more")
        if key not in ("subject", "sensor", "id"):
            raise ConfigError(f"bus: key: {key!r} is not accepted; use subject, sensor or id")
        self._bootstrap = bootstrap.removeprefix("kafka://")
        self._topic = topic
        self._partitions = partitions
        self._replication = replication_factor
        self._acks = acks
        self._idempotent = idempotent
        self._key = key
        self._publish_timeout = publish_timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._ack_wait = ack_wait_seconds
        self._session_timeout_ms = int(session_timeout_seconds * 1000)
        self._heartbeat_ms = int(heartbeat_interval_seconds * 1000)
        self._fetch_batch = fetch_batch
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._producer: Any = None
        self._subscriptions: set[_Subscription] = set()
        self._undecodable = 0

    @property
    def undecodable_count(self) -> int:
        """Records skipped because their payload is no eventflow event."""
        return self._undecodable

    async def start(self) -> None:
        """Create or check the topic, then start the producer.

        BusUnavailableError if no broker answers within connect_timeout_seconds.
        """
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks=self._acks,
            enable_idempotence=self._idempotent,
            request_timeout_ms=int(self._publish_timeout * 1000),
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._ensure_topic()
                await producer.start()
        except (TimeoutError, OSError, KafkaConnectionError) as error:
            await producer.stop()
            raise BusUnavailableError(self._unreachable("did not answer")) from error
        except KafkaError as error:
            await producer.stop()
            raise ConfigError(
                f"bus: Kafka at {self._bootstrap} refused the producer ({error!r}); if the"
                " broker does not support the idempotent producer (InitProducerId), set"
                " idempotent=False"
            ) from error
        self._producer = producer

    async def close(self) -> None:
        """Commit what is acked, leave the consumer groups, flush and stop the producer."""
        subscriptions, self._subscriptions = self._subscriptions, set()
        for subscription in subscriptions:
            await subscription.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, event: ReceivedEvent) -> None:
        producer = self._ready()
        headers = [
            ("content-type", STRUCTURED_CONTENT_TYPE),
            ("ce_id", event.id.encode()),
            ("ce_type", event.event.type.encode()),
            ("ce_source", event.event.source.encode()),
        ]
        try:
            async with asyncio.timeout(self._publish_timeout), self._in_flight:
                sent = await producer.send(
                    self._topic, event.encode(), key=self._key_of(event), headers=headers
                )
                await sent
        except (TimeoutError, KafkaError) as error:
            raise BusUnavailableError(
                f"Kafka at {self._bootstrap} did not store the event on topic {self._topic!r}"
                f" within {self._publish_timeout:g}s ({error!r}); check that the broker runs"
                " and that bus.url points at it, then send the event again"
            ) from error

    async def subscribe(self, group: str) -> AsyncIterator[KafkaDelivery]:
        self._ready()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            # Group ids are global to a Kafka cluster, unlike JetStream consumers, which
            # belong to their stream: scoping them by topic keeps two deployments apart.
            group_id=f"{self._topic}.{group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_ms,
        )
        subscription = _Subscription(consumer, group)
        consumer.subscribe([self._topic], listener=subscription)
        try:
            await consumer.start()
        except KafkaError as error:
            await consumer.stop()
            raise BusUnavailableError(
                self._unreachable(f"refused consumer group {group!r} ({error!r})")
            ) from error
        subscription.start_committer()
        self._subscriptions.add(subscription)
        try:
            while not subscription.closed:
                while subscription.due:
                    delivery = subscription.due.popleft()
                    if subscription.current(delivery):
                        yield self._handed_out(delivery)
                batches = await consumer.getmany(
                    timeout_ms=int(_POLL_SECONDS * 1000), max_records=self._fetch_batch
                )
                for tp, records in batches.items():
                    ledger = subscription.ledgers.get(tp)
                    if ledger is None:
                        continue  # fetched just before a revocation: its next owner reads it
                    for record in records:
                        if subscription.ledgers.get(tp) is not ledger:
                            break  # revoked while we yielded: the next owner reads the rest
                        ledger.track(record.offset)
                        event = self._decode(record)
                        if event is None:
                            ledger.settle(record.offset)
                            subscription.commit_soon()
                            continue
                        yield self._handed_out(
                            KafkaDelivery(event, 1, subscription, ledger, record.offset)
                        )
        finally:
            self._subscriptions.discard(subscription)
            await subscription.stop()

    async def drain(self, grace_seconds: float) -> bool:
        """Wait until every delivery yielded here is settled and its offset committed."""
        try:
            async with asyncio.timeout(grace_seconds):
                # Commits are acknowledged by the broker, not announced: poll the ledgers.
                while True:
                    if all(subscription.settled() for subscription in self._subscriptions):
                        return True
                    await asyncio.sleep(_DRAIN_POLL_SECONDS)
        except TimeoutError:
            return False

    def _handed_out(self, delivery: KafkaDelivery) -> KafkaDelivery:
        delivery._timer = asyncio.get_running_loop().call_later(self._ack_wait, delivery._expire)
        return delivery

    def _decode(self, record: Any) -> ReceivedEvent | None:
        try:
            return ReceivedEvent.decode(record.value or b"")
        except InvalidEventError as error:
            self._undecodable += 1
            log.error(
                "undecodable event skipped",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(error),
                skipped=self._undecodable,
            )
            return None

    def _key_of(self, event: ReceivedEvent) -> bytes:
        if self._key == "id":
            return event.id.encode()
        if self._key == "subject" and event.event.subject:
            return event.event.subject.encode()
        return event.sensor.encode()

    def _ready(self) -> Any:
        if self._producer is None:
            raise BusUnavailableError(
                f"the Kafka bus ({self._bootstrap}) is not started or is stopping;"
                " send the event again shortly"
            )
        return self._producer

    def _unreachable(self, what: str) -> str:
        return (
            f"bus.url: Kafka at {self._bootstrap} {what} within {self._connect_timeout:g}s;"
            " check that the broker runs and that bus.url points at it"
        )

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        try:
            await admin.start()
            try:
                response = await admin.create_topics(
                    [NewTopic(self._topic, self._partitions, self._replication)]
                )
                code = response.topic_errors[0][1]
                if code:
                    raise for_code(code)(response.topic_errors[0][2])
                log.info("topic created", topic=self._topic, partitions=self._partitions)
            except TopicAlreadyExistsError:
                [described] = await admin.describe_topics([self._topic])
                # Kafka cannot shrink a topic, and growing it moves keys between partitions:
                # an operator's choice, not something to do behind their back.
                if len(described["partitions"]) != self._partitions:
                    log.warning(
                        "topic partitions differ",
                        topic=self._topic,
                        found=len(described["partitions"]),
                        configured=self._partitions,
                    )
            except KafkaError as error:
                raise ConfigError(
                    f"bus: topic {self._topic!r} could not be created with {self._partitions}"
                    f" partitions and replication factor {self._replication} ({error!r});"
                    " check the bus topic settings against the brokers and their ACLs"
                ) from error
        finally:
            await admin.close()
