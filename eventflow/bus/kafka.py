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

Dead letters: a record whose payload does not decode, and an event nak'ed or left unacked
on its `max_deliver`-th delivery by one consumer, is copied to the dead-letter topic
(kafka_dead_letters.py); its offset counts as settled only once the copy is stored.

This module publishes and reads; a member's ledgers, committer and deliveries live in
kafka_members.py. It does not retry a failed publish (the sensor's source resends) and does
not decide what an event means.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from eventflow.bus.kafka_dead_letters import KafkaDeadLetters
from eventflow.bus.kafka_members import KafkaDelivery, KafkaMember
from eventflow.bus.protocol import DeadLetter
from eventflow.errors import BusUnavailableError, ConfigError, InvalidEventError
from eventflow.events import ReceivedEvent

log = structlog.get_logger()

KeyChoice = Literal["subject", "sensor", "id"]
STRUCTURED_CONTENT_TYPE = b"application/cloudevents+json; charset=UTF-8"
# How long the consumer waits for records before it looks at due redeliveries again:
# the bound on how late a nak(delay) comes back.
_POLL_SECONDS = 0.1
_DRAIN_POLL_SECONDS = 0.02
# The producer says nothing when its brokers go away: a metadata request this often tells
# /readyz whether the bus reaches them.
_PROBE_SECONDS = 1.0
_PROBE_TIMEOUT_SECONDS = 2.0


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
        max_deliver: int = 5,
        dead_letter_topic: str | None = None,
    ) -> None:
        for name, value in (
            ("max_deliver", max_deliver),
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
        self._max_deliver = max_deliver
        self._dead = KafkaDeadLetters(
            self._bootstrap, topic, dead_letter_topic or f"{topic}.dead-letters"
        )
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._producer: Any = None
        self._connected = False
        self._prober: asyncio.Task[None] | None = None
        self._subscriptions: set[KafkaMember] = set()
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
                await self._ensure_topic(self._topic, self._partitions)
                await self._ensure_topic(self._dead.topic, 1)
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
        self._connected = True
        self._prober = asyncio.create_task(self._probing(producer), name="kafka-bus-probe")

    @property
    def connected(self) -> bool:
        """Started, and the last metadata request reached a broker."""
        return self._producer is not None and self._connected

    async def close(self) -> None:
        """Commit what is acked, leave the consumer groups, flush and stop the producer."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)
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
        subscription = KafkaMember(
            consumer,
            group,
            max_deliver=self._max_deliver,
            key_of=self._key_of,
            store_dead_letter=self._store_dead_letter,
        )
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
                        if isinstance(event, str):
                            payload = record.value or b""
                            subscription.dead_letter_soon(
                                ledger,
                                record.offset,
                                payload=payload,
                                key=record.key,
                                reason=event,
                            )
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

    async def _probing(self, producer: Any) -> None:
        while True:
            await asyncio.sleep(_PROBE_SECONDS)
            try:
                async with asyncio.timeout(_PROBE_TIMEOUT_SECONDS):
                    await producer.client.fetch_all_metadata()
            except (KafkaError, TimeoutError, OSError) as error:
                if self._connected:
                    log.warning("bus disconnected", url=self._bootstrap, error=repr(error))
                self._connected = False
            else:
                if not self._connected:
                    log.info("bus reconnected", url=self._bootstrap)
                self._connected = True

    def _handed_out(self, delivery: KafkaDelivery) -> KafkaDelivery:
        delivery._timer = asyncio.get_running_loop().call_later(self._ack_wait, delivery._expire)
        return delivery

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters not yet replayed."""
        self._ready()
        return await self._dead.list(limit)

    async def replay_dead_letter(self, seq: int) -> None:
        """Put dead letter `seq` (its offset in the dead-letter topic) back on the bus."""
        await self._dead.replay(self._ready(), seq)

    async def _store_dead_letter(
        self, payload: bytes, key: bytes | None, source: bytes, reason: str
    ) -> None:
        async with asyncio.timeout(self._publish_timeout):
            await self._dead.store(self._ready(), payload, key, source, reason)

    def _decode(self, record: Any) -> ReceivedEvent | str:
        """The event, or why the payload is none (the dead letter's reason)."""
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
            return f"undecodable payload: {error}"

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

    async def _ensure_topic(self, topic: str, partitions: int) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        try:
            await admin.start()
            try:
                response = await admin.create_topics(
                    [NewTopic(topic, partitions, self._replication)]
                )
                code = response.topic_errors[0][1]
                if code:
                    raise for_code(code)(response.topic_errors[0][2])
                log.info("topic created", topic=topic, partitions=partitions)
            except TopicAlreadyExistsError:
                [described] = await admin.describe_topics([topic])
                # Kafka cannot shrink a topic, and growing it moves keys between partitions:
                # an operator's choice, not something to do behind their back.
                if len(described["partitions"]) != partitions:
                    log.warning(
                        "topic partitions differ",
                        topic=topic,
                        found=len(described["partitions"]),
                        configured=partitions,
                    )
            except KafkaError as error:
                raise ConfigError(
                    f"bus: topic {topic!r} could not be created with {partitions}"
                    f" partitions and replication factor {self._replication} ({error!r});"
                    " check the bus topic settings against the brokers and their ACLs"
                ) from error
        finally:
            await admin.close()
