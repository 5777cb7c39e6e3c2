"""The Kafka bus's dead letters: a one-partition topic `<topic>.dead-letters`.

The Kafka bus sends here a record whose payload does not decode, and an event not acked
after `max_deliver` deliveries by one consumer; only once the dead letter is stored does the
bus let the offset of the original record be committed. A dead letter's `seq` is its offset.

Kafka cannot delete one record, so a replay writes a tombstone (same key, no value) after
putting the event back on the bus: a listing skips letters that have one, and a second replay
of the same letter answers "not there", as on NATS. This module does not decide when an event
is a dead letter (kafka.py does) and keeps no state besides the topic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from eventflow.bus.protocol import DeadLetter
from eventflow.errors import BusUnavailableError, PermanentError

log = structlog.get_logger()

REASON_HEADER = "eventflow-dead-reason"
SOURCE_HEADER = "eventflow-dead-source"  # <topic>/<partition>/<offset> of the original record
KEY_HEADER = "eventflow-dead-key"  # the original record's key, given back on replay
_READ_SECONDS = 10.0


def dead_letter_key(topic: str, partition: int, offset: int) -> bytes:
    """One key per original record: a letter stored twice (a retry) lists once."""
    return f"{topic}/{partition}/{offset}".encode()


class KafkaDeadLetters:
    """Store, list and replay the dead letters of the bus on `topic`."""

    def __init__(self, bootstrap: str, topic: str, dead_topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self.topic = dead_topic

    async def store(
        self, producer: Any, payload: bytes, key: bytes | None, source: bytes, reason: str
    ) -> None:
        """Write one dead letter; raises KafkaError or TimeoutError if the broker did not."""
        headers = [
            (REASON_HEADER, " ".join(reason.split()).encode()),
            (SOURCE_HEADER, source),
            (KEY_HEADER, key or b""),
        ]
        await producer.send_and_wait(self.topic, payload, key=source, headers=headers)
        log.error("event dead-lettered", source=source.decode(), reason=reason)

    async def list(self, limit: int) -> list[DeadLetter]:
        """The oldest `limit` dead letters not replayed yet."""
        letters = await self._read_all()
        return [letter for letter, _ in letters.values()][:limit]

    async def replay(self, producer: Any, seq: int) -> None:
        """Put dead letter `seq` back on the bus topic, then tombstone it."""
        letters = await self._read_all()
        found = next(((k, v) for k, v in letters.items() if v[0].seq == seq), None)
        if found is None:
            raise PermanentError(
                f"dead letter {seq} is not in topic {self.topic!r} (or was replayed);"
                " list_dead_letters() shows the ones there"
            )
        source, (letter, key) = found
        try:
            await producer.send_and_wait(self._topic, letter.payload, key=key or None)
            await producer.send_and_wait(self.topic, None, key=source)
        except (KafkaError, TimeoutError) as error:
            raise self._unavailable(error) from error
        log.info("dead letter replayed", seq=seq, source=source.decode())

    async def _read_all(self) -> dict[bytes, tuple[DeadLetter, bytes]]:
        """Every live letter by source key, oldest first, with its original record key."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, group_id=None
        )
        tp = TopicPartition(self.topic, 0)
        letters: dict[bytes, tuple[DeadLetter, bytes]] = {}
        try:
            async with asyncio.timeout(_READ_SECONDS):
                await consumer.start()
                consumer.assign([tp])
                end = (await consumer.end_offsets([tp]))[tp]
                await consumer.seek_to_beginning(tp)
                while await consumer.position(tp) < end:
                    batches = await consumer.getmany(tp, timeout_ms=200)
                    for record in batches.get(tp, []):
                        if record.offset >= end:
                            break
                        self._take(letters, record)
        except (KafkaError, TimeoutError) as error:
            raise self._unavailable(error) from error
        finally:
            await consumer.stop()
        return letters

    def _take(self, letters: dict[bytes, tuple[DeadLetter, bytes]], record: Any) -> None:
        source = record.key or b""
        if record.value is None:
            letters.pop(source, None)
            return
        if source in letters:
            return  # the same letter stored again by a retry: the first one stands
        headers = dict(record.headers)
        origin = headers.get(SOURCE_HEADER, b"").decode()
        subject = origin.rsplit("/", 2)[0] if origin else self._topic
        reason = headers.get(REASON_HEADER, b"").decode()
        letter = DeadLetter(record.offset, subject, reason, record.value)
        letters[source] = (letter, headers.get(KEY_HEADER, b""))

    def _unavailable(self, error: BaseException) -> BusUnavailableError:
        return BusUnavailableError(
            f"Kafka at {self._bootstrap} did not answer for the dead-letter topic"
            f" {self.topic!r} ({error!r}); try again once the bus is ready (/readyz)"
        )
