"""The durable bus on NATS JetStream: what eventflow runs on when replicas share the work.

Events are stored in one file-backed stream (`<prefix>.<sensor>` subjects). `publish` returns
after the stream's PubAck; `Nats-Msg-Id` (sensor + event id) lets the server drop a resend
within its duplicate window. Each consumer group is ONE durable pull consumer, shared by every
replica that subscribes with the same group name.

Publishing goes through one PubAck mux (nats_publishing.py); reading through one prefetching
pull per subscription (nats_pulling.py). Acks and naks are plain publishes, flushed with the
connection's buffer: no round trip each.

Dead letters: the bus, not the server, counts deliveries. A message delivered more than
`max_deliver` times, or whose payload does not decode, is copied to the dead-letter stream,
then terminated; if the copy fails it is nak'ed and comes back. A server-side limit would
instead drop it silently, also when the last attempt timed out because a replica died.

This module does not retry a failed publish (the sensor answers 503 and its source resends)
and does not decide what an event means; it does not retry a failed `start`: the service
does (eventflow/bus/connecting.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Coroutine

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from eventflow.bus.nats_publishing import PubAckMux, PublishFailedError
from eventflow.bus.nats_pulling import Puller
from eventflow.bus.protocol import DeadLetter
from eventflow.errors import BusUnavailableError, ConfigError, InvalidEventError, PermanentError
from eventflow.events import ReceivedEvent

log = structlog.get_logger()

REASON_HEADER = "Eventflow-Dead-Reason"
SUBJECT_HEADER = "Eventflow-Dead-Subject"
_DRAIN_POLL_SECONDS = 0.05
_PULL_EXPIRES_SECONDS = 5.0


class NatsDelivery:
    """One JetStream message handed to one consumer; ack and nak are safe to repeat."""

    __slots__ = ("_attempt", "_event", "_msg", "_settled")

    def __init__(self, event: ReceivedEvent, msg: Msg, attempt: int) -> None:
        self._event = event
        self._msg = msg
        self._attempt = attempt
        self._settled = False

    @property
    def event(self) -> ReceivedEvent:
        return self._event

    @property
    def attempt(self) -> int:
        return self._attempt

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            await self._reply("ack", self._msg.ack())

    async def nak(self, delay: float = 0.0) -> None:
        if not self._settled:
            self._settled = True
            await self._reply("nak", self._msg.nak(delay=delay if delay > 0 else None))

    async def _reply(self, what: str, reply: Coroutine[object, object, None]) -> None:
        try:
            await reply
        except NatsError as error:
            # Not raised: it comes back after ack_wait; the store's dedupe finds its runs.
            log.warning("bus reply lost", reply=what, event_id=self._event.id, error=repr(error))


class NatsBus:
    """The EventBus on one JetStream stream; `start` creates or updates the streams."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = "EVENTFLOW",
        subject_prefix: str = "eventflow.events",
        max_age_seconds: float = 7 * 24 * 3600.0,
        duplicate_window_seconds: float = 120.0,
        max_in_flight: int = 1024,
        publish_timeout_seconds: float = 5.0,
        ack_wait_seconds: float = 30.0,
        max_deliver: int = 5,
        fetch_batch: int = 256,
        dead_letter_subject: str = "eventflow.dead-letters",
        connect_timeout_seconds: float = 10.0,
        reconnect_wait_seconds: float = 2.0,
    ) -> None:
        if dead_letter_subject.startswith(f"{subject_prefix}."):
            raise ConfigError(
                f"bus: dead_letter_subject {dead_letter_subject!r} lies under subject_prefix"
                f" {subject_prefix!r}; choose a subject outside `{subject_prefix}.>`"
            )
        for name, value in (("max_deliver", max_deliver), ("max_in_flight", max_in_flight)):
            if value < 1:
                raise ConfigError(f"bus: {name}: {value} is not accepted; use 1 or more")
        self._url = url
        self._stream = stream
        self._prefix = subject_prefix
        self._dead_stream = f"{stream}_DLQ"
        self._dead_subject = dead_letter_subject
        self._max_age = max_age_seconds
        # The server refuses a dedupe window longer than the stream keeps messages.
        self._duplicate_window = min(duplicate_window_seconds, max_age_seconds or math.inf)
        self._max_in_flight = max_in_flight
        self._publish_timeout = publish_timeout_seconds
        self._ack_wait = ack_wait_seconds
        self._max_deliver = max_deliver
        self._fetch_batch = fetch_batch
        self._connect_timeout = connect_timeout_seconds
        self._reconnect_wait = reconnect_wait_seconds
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._publisher: PubAckMux | None = None
        self._pullers: set[Puller] = set()
        self._groups: set[str] = set()
        self._closed = False

    async def start(self) -> None:
        """Connect, make the streams; a first connection is bounded so a wrong URL is reported.

        Once connected, the client reconnects forever; publishes wait up to their timeout."""
        nc = Client()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await nc.connect(
                    self._url,
                    name="eventflow",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._reconnect_wait,  # type: ignore[arg-type]
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
        except asyncio.CancelledError:
            await nc.close()  # the service stopped while the broker was down
            raise
        except (TimeoutError, OSError, NatsError) as error:
            await nc.close()
            raise BusUnavailableError(
                f"bus.url: NATS at {self._url} did not answer within"
                f" {self._connect_timeout:g}s; check that nats-server runs with JetStream"
                " enabled (-js) and that bus.url points at it"
            ) from error
        self._nc = nc
        self._js = nc.jetstream(timeout=self._publish_timeout)
        self._publisher = PubAckMux(
            nc, max_in_flight=self._max_in_flight, timeout_seconds=self._publish_timeout
        )
        self._closed = False
        try:
            await self._publisher.start()
            await self._ensure_stream(self._stream, [f"{self._prefix}.>"])
            await self._ensure_stream(self._dead_stream, [self._dead_subject])
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop fetching and flush what is buffered (acks, naks), then disconnect."""
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        publisher, self._publisher = self._publisher, None
        for puller in list(self._pullers):
            await puller.stop()  # wakes its subscriber, whose loop then ends
        if nc is None or nc.is_closed:
            return
        if publisher is not None:
            with contextlib.suppress(NatsError):
                await publisher.close()
        try:
            async with asyncio.timeout(self._publish_timeout):
                await nc.drain()
        except (TimeoutError, NatsError) as error:
            log.warning("bus close incomplete", url=self._url, error=repr(error))
            await nc.close()

    @property
    def connected(self) -> bool:
        """Started, and the client holds a live connection (it reconnects by itself)."""
        return self._js is not None and self._nc is not None and self._nc.is_connected

    async def publish(self, event: ReceivedEvent) -> None:
        self._ready()
        publisher = self._publisher
        if publisher is None or not self.connected:
            # Refused at once: a publish buffered during a reconnect would hold the sender
            # for the whole publish timeout and then fail anyway.
            raise BusUnavailableError(
                f"NATS at {self._url} is unreachable, reconnecting; send the event again shortly"
            )
        subject = f"{self._prefix}.{event.sensor}"
        headers = {
            "Nats-Msg-Id": f"{event.sensor}:{event.id}",
            # A PubAck from another stream on these subjects would not be ours to trust.
            "Nats-Expected-Stream": self._stream,
        }
        try:
            await publisher.publish(subject, event.encode(), headers)
        except (PublishFailedError, NatsError) as error:
            raise BusUnavailableError(
                f"NATS at {self._url} did not store the event on {subject!r} in stream"
                f" {self._stream!r}: {error}; check that nats-server runs with JetStream"
                " and has room, then send the event again"
            ) from error

    async def subscribe(self, group: str) -> AsyncIterator[NatsDelivery]:
        js = self._ready()
        assert self._nc is not None
        await self._bind(js, group)
        puller = Puller(
            self._nc,
            stream=self._stream,
            durable=group,
            batch=self._fetch_batch,
            expires_seconds=_PULL_EXPIRES_SECONDS,
        )
        self._groups.add(group)
        self._pullers.add(puller)
        try:
            await puller.start()
            while (msg := await puller.next()) is not None:
                delivery = await self._receive(js, msg)
                if delivery is not None:
                    yield delivery
        finally:
            self._pullers.discard(puller)
            await puller.stop()

    async def drain(self, grace_seconds: float) -> bool:
        """Wait until the groups subscribed here have nothing pending or unacknowledged."""
        if not self._groups:
            return True
        js = self._ready()
        try:
            async with asyncio.timeout(grace_seconds):
                # JetStream pushes no "consumer idle" event: its counters are polled.
                while True:
                    if await self._settled(js):
                        return True
                    await asyncio.sleep(_DRAIN_POLL_SECONDS)
        except TimeoutError:
            return False

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters still in the dead-letter stream."""
        js = self._ready()
        letters: list[DeadLetter] = []
        seq = 1
        while len(letters) < limit:
            try:
                raw = await js.get_msg(
                    self._dead_stream, seq, subject=self._dead_subject, next=True
                )
            except NotFoundError:
                return letters
            except (TimeoutError, NatsError) as error:
                raise self._dead_letters_unavailable(error) from error
            seq = raw.seq or seq
            headers = raw.headers or {}
            subject, reason = headers.get(SUBJECT_HEADER, ""), headers.get(REASON_HEADER, "")
            letters.append(DeadLetter(seq, subject, reason, raw.data or b""))
            seq += 1
        return letters

    async def replay_dead_letter(self, seq: int) -> None:
        """Put dead letter `seq` back on its subject as a new message, then delete it."""
        js = self._ready()
        try:
            raw = await js.get_msg(self._dead_stream, seq)
        except NotFoundError as error:
            raise PermanentError(
                f"dead letter {seq} is not in stream {self._dead_stream!r};"
                " list_dead_letters() shows the ones there"
            ) from error
        except (TimeoutError, NatsError) as error:
            raise self._dead_letters_unavailable(error) from error
        subject = (raw.headers or {}).get(SUBJECT_HEADER, "")
        # The id ties the replay to this dead letter: replaying twice stores it once.
        headers = {"Nats-Msg-Id": f"{self._dead_stream}:{seq}"}
        try:
            await js.publish(subject, raw.data or b"", stream=self._stream, headers=headers)
            await js.delete_msg(self._dead_stream, seq)
        except (TimeoutError, NatsError) as error:
            raise self._dead_letters_unavailable(error) from error
        log.info("dead letter replayed", seq=seq, subject=subject)

    def _dead_letters_unavailable(self, error: Exception) -> BusUnavailableError:
        return BusUnavailableError(
            f"NATS at {self._url} did not answer for the dead-letter stream"
            f" {self._dead_stream!r} ({error!r}); try again once the bus is ready (/readyz)"
        )

    def _ready(self) -> JetStreamContext:
        if self._js is None or self._closed:
            raise BusUnavailableError(
                f"the NATS bus ({self._url}) is not started or is stopping;"
                " send the event again shortly"
            )
        return self._js

    async def _ensure_stream(self, name: str, subjects: list[str]) -> None:
        assert self._js is not None
        wanted = StreamConfig(
            name=name,
            subjects=subjects,
            storage=StorageType.FILE,
            max_age=self._max_age,
            duplicate_window=self._duplicate_window,
        )
        try:
            try:
                info = await self._js.stream_info(name)
            except NotFoundError:
                await self._js.add_stream(wanted)
                log.info("stream created", stream=name, subjects=subjects)
                return
            current = info.config
            found = (current.subjects, current.max_age, current.duplicate_window)
            if current.storage != StorageType.FILE:
                raise ConfigError(
                    f"bus: stream {name!r} exists with {current.storage} storage; eventflow"
                    " needs file storage: delete the stream or set another bus stream name"
                )
            if found != (subjects, self._max_age, self._duplicate_window):
                await self._js.update_stream(wanted)
                log.info("stream updated", stream=name, subjects=subjects)
        except APIError as error:
            raise ConfigError(
                f"bus: stream {name!r} on {subjects} could not be created or updated:"
                f" {error.description}; check the bus stream name, subject prefix and"
                " dead-letter subject against the streams already on the server"
            ) from error

    async def _bind(self, js: JetStreamContext, group: str) -> None:
        """Make the group's durable consumer unless it exists (replicas share it)."""
        try:
            await js.consumer_info(self._stream, group)
        except NotFoundError:
            await js.add_consumer(
                self._stream,
                ConsumerConfig(
                    durable_name=group,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self._ack_wait,
                    max_deliver=-1,  # the bus counts deliveries itself (module docstring)
                    filter_subject=f"{self._prefix}.>",
                ),
            )
            log.info("consumer created", stream=self._stream, group=group)

    async def _receive(self, js: JetStreamContext, msg: Msg) -> NatsDelivery | None:
        attempt = msg.metadata.num_delivered
        if attempt > self._max_deliver:
            await self._dead_letter(js, msg, f"not acknowledged after {self._max_deliver} attempts")
            return None
        try:
            event = ReceivedEvent.decode(msg.data)
        except InvalidEventError as error:
            await self._dead_letter(js, msg, f"undecodable payload: {error}")
            return None
        return NatsDelivery(event, msg, attempt)

    async def _dead_letter(self, js: JetStreamContext, msg: Msg, reason: str) -> None:
        seq = msg.metadata.sequence.stream
        headers = {
            # One dead letter per stream message, however often this one is retried.
            "Nats-Msg-Id": f"{self._stream}:{seq}",
            REASON_HEADER: " ".join(reason.split()),  # a header value is one line
            SUBJECT_HEADER: msg.subject,
        }
        try:
            await js.publish(
                self._dead_subject, msg.data, stream=self._dead_stream, headers=headers
            )
        except (TimeoutError, NatsError) as error:
            log.warning("dead letter not stored, will retry", seq=seq, error=repr(error))
            with contextlib.suppress(NatsError):
                await msg.nak(delay=self._reconnect_wait)
            return
        with contextlib.suppress(NatsError):
            await msg.term()
        log.error("event dead-lettered", subject=msg.subject, seq=seq, reason=reason)

    async def _settled(self, js: JetStreamContext) -> bool:
        for group in self._groups:
            try:
                info = await js.consumer_info(self._stream, group)
            except NatsError:
                return False
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    async def _on_error(self, error: Exception) -> None:
        log.warning("bus connection error", url=self._url, error=repr(error))

    async def _on_disconnected(self) -> None:
        (log.info if self._closed else log.warning)("bus disconnected", url=self._url)
        if self._publisher is not None:
            # Their PubAcks would have come on the lost connection: waiting is pointless.
            self._publisher.fail_all("the connection dropped before the PubAck came")

    async def _on_reconnected(self) -> None:
        log.info("bus reconnected", url=self._url)
        for puller in list(self._pullers):
            await puller.pull_again()
