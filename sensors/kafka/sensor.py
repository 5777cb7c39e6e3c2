"""The Kafka sensor: a consumer group whose records become events on the bus.

For each record it lets `normalizing.py` make the event, awaits `emit` (which returns once the
bus holds the event) and only then counts the record as done; offsets are committed per
partition up to the last done record, after each fetched batch and when partitions are
revoked or the sensor stops (promise 1). Records of one partition go to the bus in order;
partitions are worked on side by side. An event the bus does not take is retried with
backoff, never skipped. A poison record is published as an eventflow.kafka.poison event (or
copied to `deadLetterTopic`), counted, and passed. With `valueFormat: s3` each value is an
object-store notification (MinIO's Kafka target): the object-store sensor's reporter decodes it,
filters, drops duplicates and older changes, and emits one event per change; the offset moves
only once all of them are on the bus, and an undecodable value is a poison record. When the
brokers cannot be reached the sensor reports `connected = False`, drops its client and
connects again with backoff; the group then resumes from the last committed offset, so a
record may reach the bus twice, with the same event id (promise 2 makes that harmless), but is
never lost.

This module does not map records to events, validate configuration or retry the bus itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.helpers import create_ssl_context

from eventflow.errors import BusUnavailableError, TemporaryError
from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.protocol import Emit
from eventflow.sensing.secrets import read_secret
from sensors.kafka.config import KafkaConfig
from sensors.kafka.normalizing import (
    KafkaRecord,
    PoisonRecord,
    check_size,
    normalize,
    poison_event,
)
from sensors.objectstore.config import NotificationFilters
from sensors.objectstore.normalizing import DecodeError
from sensors.objectstore.reporting import Reporter

log = structlog.get_logger()

_POLL_SECONDS = 0.2
# getmany returns nothing when the brokers are gone, so an idle sensor asks for metadata
# this often to notice (and to report not connected to /readyz).
_PROBE_SECONDS = 2.0
_PROBE_TIMEOUT_SECONDS = 5.0
_COMMIT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between retries: `initial` seconds, doubled each time, at most `maximum`."""

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        return min(self.maximum, self.initial * 2.0 ** min(attempt, 32))


def record_of(message: Any) -> KafkaRecord:
    """aiokafka's ConsumerRecord -> the client-free record `normalizing` works on."""
    timestamp = None
    if message.timestamp is not None and message.timestamp >= 0:
        timestamp = datetime.fromtimestamp(message.timestamp / 1000, UTC)
    return KafkaRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=tuple((name, value or b"") for name, value in message.headers),
        timestamp=timestamp,
    )


class _Progress(ConsumerRebalanceListener):  # type: ignore[misc]
    """Per owned partition, the offset after the last record whose event is on the bus."""

    def __init__(self, consumer: Any, sensor: str) -> None:
        self.consumer = consumer
        self.sensor = sensor
        self.owned: set[Any] = set()
        self.done: dict[Any, int] = {}
        self.committed: dict[Any, int] = {}

    def mark(self, tp: Any, offset: int) -> None:
        if tp in self.owned:
            self.done[tp] = offset + 1

    async def commit(self) -> None:
        """Commit what moved; raises KafkaError when the brokers cannot take it."""
        wanted = {tp: point for tp, point in self.done.items() if self.committed.get(tp) != point}
        if not wanted:
            return
        try:
            async with asyncio.timeout(_COMMIT_TIMEOUT_SECONDS):
                await self.consumer.commit(wanted)
        except (CommitFailedError, IllegalStateError) as error:
            # The group moved the partitions on: their next owner reads from the last commit.
            log.warning("offset commit refused", sensor=self.sensor, error=repr(error))
            return
        except TimeoutError as error:
            raise KafkaError(f"offset commit took over {_COMMIT_TIMEOUT_SECONDS:g}s") from error
        self.committed.update(wanted)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        with contextlib.suppress(KafkaError):
            await self.commit()
        for tp in revoked:
            self.owned.discard(tp)
            self.done.pop(tp, None)
            self.committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.owned.update(assigned)
        log.info("partitions assigned", sensor=self.sensor, partitions=sorted(map(str, assigned)))


class KafkaSensor:
    """One consumer group; `run` until cancelled, reconnecting when the brokers go away."""

    def __init__(
        self,
        name: str,
        config: KafkaConfig,
        *,
        backoff: Backoff | None = None,
        environ: Mapping[str, str] | None = None,
        session_timeout_seconds: float = 10.0,
        heartbeat_interval_seconds: float = 1.0,
        metadata_refresh_seconds: float = 30.0,
        max_batch: int = 500,
        notifications: Reporter[NotificationFilters] | None = None,
    ) -> None:
        """`notifications` reports the values of valueFormat s3; the plugin makes it."""
        self.name = name
        self.config = config
        self.notifications = notifications
        self._backoff = backoff or Backoff()
        self._environ = environ
        self._client_options: dict[str, Any] = {
            "session_timeout_ms": int(session_timeout_seconds * 1000),
            "heartbeat_interval_ms": int(heartbeat_interval_seconds * 1000),
            # A topicPattern picks up new topics when metadata is refreshed.
            "metadata_max_age_ms": int(metadata_refresh_seconds * 1000),
            "max_poll_records": max_batch,
        }
        self._connected = False
        self._problem: str | None = None
        self._poison = 0

    @property
    def connected(self) -> bool:
        """Whether the consumer is in touch with the brokers, for /readyz."""
        return self._connected

    @property
    def problem(self) -> str | None:
        """Why the last connection failed, for /readyz; None once connected."""
        return self._problem

    @property
    def poison_count(self) -> int:
        """Records passed as poison since the sensor started."""
        return self._poison

    async def run(self, emit: Emit) -> None:
        failures = 0
        while True:
            try:
                await self._consume(emit)
            except (KafkaError, OSError, TemporaryError) as error:
                self._connected = False
                servers = ",".join(self.config.bootstrapServers)
                self._problem = (
                    f"brokers {servers}: {error}; check bootstrapServers, security and that"
                    " the brokers are up"
                )
                delay = self._backoff.delay(failures)
                failures += 1
                log.warning(
                    "kafka unreachable",
                    sensor=self.name,
                    servers=",".join(self.config.bootstrapServers),
                    error=repr(error),
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _consume(self, emit: Emit) -> None:
        """One connection: consume until the brokers go away (KafkaError) or cancelled."""
        security = self._security()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrapServers,
            group_id=self.config.group_id(self.name),
            enable_auto_commit=False,
            auto_offset_reset=self.config.startFrom,
            **self._client_options,
            **security,
        )
        progress = _Progress(consumer, self.name)
        if self.config.topics is not None:
            consumer.subscribe(self.config.topics, listener=progress)
        else:
            consumer.subscribe(pattern=self.config.topicPattern, listener=progress)
        producer = None
        if self.config.deadLetterTopic is not None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.config.bootstrapServers, acks="all", **security
            )
        async with contextlib.AsyncExitStack() as closing:
            # Callbacks run last-in first-out, each even if one before was cancelled, so the
            # clients are always closed.
            closing.push_async_callback(consumer.stop)
            if producer is not None:
                closing.push_async_callback(producer.stop)
            closing.push_async_callback(self._last_commit, progress)
            try:
                await consumer.start()
                if producer is not None:
                    await producer.start()
                self._connected, self._problem = True, None
                log.info("kafka connected", sensor=self.name, group=self.config.group_id(self.name))
                await self._polling(consumer, producer, progress, emit)
            except KafkaError:
                self._connected = False  # brokers gone: a last commit would only time out
                raise

    async def _last_commit(self, progress: _Progress) -> None:
        if self._connected:
            self._connected = False
            with contextlib.suppress(KafkaError):
                await progress.commit()

    async def _polling(self, consumer: Any, producer: Any, progress: _Progress, emit: Emit) -> None:
        idle = 0.0
        while True:
            batches = await consumer.getmany(
                timeout_ms=int(_POLL_SECONDS * 1000),
                max_records=self._client_options["max_poll_records"],
            )
            if not batches:
                idle += _POLL_SECONDS
                if idle >= _PROBE_SECONDS:
                    idle = 0.0
                    async with asyncio.timeout(_PROBE_TIMEOUT_SECONDS):
                        await consumer.topics()
                continue
            idle = 0.0
            async with asyncio.TaskGroup() as group:
                for tp, messages in batches.items():
                    group.create_task(
                        self._partition(tp, messages, producer, progress, emit),
                        name=f"kafka-sensor-{self.name}-{tp.topic}-{tp.partition}",
                    )
            await progress.commit()

    async def _partition(
        self,
        tp: Any,
        messages: Sequence[Any],
        producer: Any,
        progress: _Progress,
        emit: Emit,
    ) -> None:
        """The records of one partition, in order, each on the bus before the next."""
        for message in messages:
            if tp not in progress.owned:
                return  # revoked meanwhile: the next owner reads the rest
            record = record_of(message)
            try:
                if self.notifications is None:
                    await self._emit(normalize(record, self.config), emit)
                else:
                    await self._notification(record, self.notifications, emit)
            except PoisonRecord as poison:
                await self._pass_poison(record, poison.reason, producer, emit)
            progress.mark(tp, record.offset)

    async def _notification(
        self, record: KafkaRecord, reporter: Reporter[NotificationFilters], emit: Emit
    ) -> None:
        """One value of valueFormat s3: its object changes, each on the bus; the value is
        decoded whole before the first is emitted, so a poison value publishes nothing."""
        check_size(record, self.config)

        async def patient(event: Event) -> ReceivedEvent:
            return await self._emit(event, emit)

        try:
            await reporter.report_message(record.value or b"", patient)
        except DecodeError as error:
            raise PoisonRecord(str(error)) from error
        await reporter.purge_due()

    async def _emit(self, event: Event, emit: Emit) -> ReceivedEvent:
        attempt = 0
        while True:
            try:
                return await emit(event)
            except BusUnavailableError as error:
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "event not taken",
                    sensor=self.name,
                    event_id=event.id,
                    error=str(error),
                    retry_in=delay,
                )
                await asyncio.sleep(delay)

    async def _pass_poison(
        self, record: KafkaRecord, reason: str, producer: Any, emit: Emit
    ) -> None:
        log.error(
            "poison record",
            sensor=self.name,
            record=record.position,
            reason=reason,
            dead_letter_topic=self.config.deadLetterTopic,
        )
        if producer is None:
            await self._emit(poison_event(record, reason), emit)
        else:
            await self._dead_letter(record, reason, producer)
        self._poison += 1

    async def _dead_letter(self, record: KafkaRecord, reason: str, producer: Any) -> None:
        headers = [
            *record.headers,
            ("eventflow_poison_reason", reason.encode()),
            ("eventflow_poison_record", record.position.encode()),
        ]
        attempt = 0
        while True:
            try:
                await producer.send_and_wait(
                    self.config.deadLetterTopic, record.value, key=record.key, headers=headers
                )
            except KafkaError as error:
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "dead letter not taken",
                    sensor=self.name,
                    topic=self.config.deadLetterTopic,
                    error=repr(error),
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
            else:
                return

    def _security(self) -> dict[str, Any]:
        """Client keyword arguments for TLS and SASL; reads the password now, so a rotated
        Secret is picked up on the next connection."""
        security = self.config.security
        options: dict[str, Any] = {"security_protocol": security.protocol}
        if security.protocol.endswith("SSL"):
            options["ssl_context"] = create_ssl_context(cafile=security.caFile)
        if security.password is not None:
            password = read_secret(
                security.password, os.environ if self._environ is None else self._environ
            )
            if isinstance(password, str):
                raise TemporaryError(f"sensor {self.name}: security.password: {password}")
            options["sasl_mechanism"] = security.saslMechanism
            options["sasl_plain_username"] = security.username
            options["sasl_plain_password"] = password.decode("utf-8", "surrogateescape")
        return options
