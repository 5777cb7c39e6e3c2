"""The NATS sensor: reads core NATS subjects or a JetStream durable consumer and emits events.

Two guarantees, by the source's nature:
- core NATS is at most once: the server keeps nothing, so a message published while the sensor
  is disconnected, or dropped by the client as a slow consumer, is gone. While the bus refuses
  an event the sensor retries it (with backoff) rather than drop it; meanwhile new messages
  wait in the client's pending buffer. Replicas share a queue group, so each message reaches
  one of them.
- JetStream is at least once: a message is acked only after `emit` returned (the event is on
  the bus, promise 1); a bus failure naks it with the bus's delay, so the server redelivers
  it. A redelivery keeps its event id (Nats-Msg-Id or `<stream>/<sequence>`), so the engine
  finds its run already there.

A poison message (see `normalizing.py`) is reported once, as an `eventflow.nats.poison` event
or on `deadLetterSubject`, counted in `poisoned`, then terminated so it is never redelivered.
With `payloadFormat: s3` each payload is an object-store notification (MinIO's NATS target):
the object-store sensor's reporter decodes it, filters, drops duplicates and older changes and
emits one event per change; the message is acked once all are on the bus, and an undecodable
one is poison. The connection is retried with capped exponential backoff; once up, nats-py
reconnects by itself and `connected` tells /readyz. This module does not decide what a
message means.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from eventflow.errors import TemporaryError
from eventflow.sensing.protocol import Emit
from eventflow.sensing.secrets import SecretSource, read_secret
from sensors.nats.config import Credentials, JetStreamConfig, NatsConfig
from sensors.nats.normalizing import (
    NatsMessage,
    PoisonMessage,
    check_size,
    normalize,
    poison_event,
)
from sensors.objectstore.config import NotificationFilters
from sensors.objectstore.normalizing import DecodeError
from sensors.objectstore.reporting import Reporter

log = structlog.get_logger()

REASON_HEADER = "Eventflow-Poison-Reason"
SUBJECT_HEADER = "Eventflow-Poison-Subject"
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
FETCH_BATCH = 64
_FETCH_WAIT_SECONDS = 1.0
_FLUSH_SECONDS = 5.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def backoff(
    initial: float = BACKOFF_INITIAL_SECONDS, cap: float = BACKOFF_MAX_SECONDS
) -> Iterator[float]:
    """Delays between attempts: doubling from `initial`, never above `cap`."""
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, cap)


def _secret(source: SecretSource, environ: Mapping[str, str]) -> str:
    value = read_secret(source, environ)
    if isinstance(value, str):
        # Not a config error: a Kubernetes Secret may be mounted after the pod starts.
        raise TemporaryError(f"credentials: {value}; the sensor tries again")
    return value.decode("utf-8", "surrogateescape")


def connect_options(credentials: Credentials | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """nats-py `connect` keyword arguments for `credentials`; secrets are read now."""
    if credentials is None:
        return {}
    options: dict[str, Any] = {}
    if credentials.user is not None and credentials.password is not None:
        options["user"] = credentials.user
        options["password"] = _secret(credentials.password, environ)
    if credentials.token is not None:
        options["token"] = _secret(credentials.token, environ)
    if credentials.credsFile is not None:
        options["user_credentials"] = credentials.credsFile
    if credentials.nkeySeedFile is not None:
        options["nkeys_seed"] = credentials.nkeySeedFile
    tls = credentials.tls
    if tls is not None:
        try:
            context = ssl.create_default_context(cafile=tls.caFile)
            if tls.certFile is not None:
                context.load_cert_chain(tls.certFile, tls.keyFile)
        except OSError as error:
            raise TemporaryError(
                f"credentials.tls: cannot load {error.filename or 'a file'}:"
                f" {error.strerror or error}; check caFile, certFile and keyFile"
            ) from error
        options["tls"] = context
    return options


def _message(msg: Msg) -> NatsMessage:
    stream = sequence = None
    if msg.reply and msg.reply.startswith("$JS.ACK."):
        metadata = msg.metadata
        stream, sequence = metadata.stream, metadata.sequence.stream
    return NatsMessage(msg.subject, msg.data, dict(msg.headers or {}), stream, sequence)


class NatsSensor:
    """One `spec.nats` sensor: one connection, core subscriptions or one pull consumer."""

    def __init__(
        self,
        name: str,
        config: NatsConfig,
        clock: Callable[[], datetime] = _utc_now,
        *,
        environ: Mapping[str, str] | None = None,
        reconnect_wait_seconds: float = 2.0,
        notifications: Reporter[NotificationFilters] | None = None,
    ) -> None:
        """`notifications` reports the payloads of payloadFormat s3; the plugin makes it."""
        self.name = name
        self.config = config
        self.notifications = notifications
        self.poisoned = 0
        self._clock = clock
        self._environ = environ
        self._reconnect_wait = reconnect_wait_seconds
        self._nc: Client | None = None

    @property
    def connected(self) -> bool:
        """Whether the sensor holds a live connection to a server now (for /readyz)."""
        return self._nc is not None and self._nc.is_connected

    async def run(self, emit: Emit) -> None:
        """Connect (again, with backoff, after any failure) and feed messages to `emit`."""
        delays = backoff()
        while True:
            try:
                nc = await self._connect()
            except (TemporaryError, OSError, TimeoutError, NatsError) as error:
                delay = next(delays)
                log.warning(
                    "sensor not connected", sensor=self.name, error=str(error), retry_in=delay
                )
                await asyncio.sleep(delay)
                continue
            delays = backoff()
            self._nc = nc
            try:
                if self.config.jetstream is not None:
                    await self._consume(nc, self.config.jetstream, emit)
                else:
                    await self._listen(nc, emit)
            except (NatsError, TemporaryError) as error:
                delay = next(delays)
                log.warning(
                    "sensor source failed", sensor=self.name, error=repr(error), retry_in=delay
                )
                await asyncio.sleep(delay)
            finally:
                self._nc = None
                await self._close(nc)

    async def _connect(self) -> Client:
        options = connect_options(
            self.config.credentials, os.environ if self._environ is None else self._environ
        )
        nc = Client()
        try:
            await nc.connect(
                self.config.servers,
                name=f"eventflow-sensor-{self.name}",
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=self._reconnect_wait,  # type: ignore[arg-type]
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                **options,
            )
        except BaseException:
            await self._close(nc)
            raise
        log.info("sensor connected", sensor=self.name, servers=self.config.servers)
        return nc

    async def _close(self, nc: Client) -> None:
        with contextlib.suppress(NatsError, OSError, TimeoutError):
            async with asyncio.timeout(_FLUSH_SECONDS):
                await (nc.drain() if nc.is_connected else nc.close())

    async def _listen(self, nc: Client, emit: Emit) -> None:
        """Core NATS: nats-py calls `on_message` for one message at a time per subscription."""

        async def on_message(msg: Msg) -> None:
            message = _message(msg)
            for delay in backoff():
                try:
                    await self._take(nc, message, emit)
                except TemporaryError as error:
                    wait = max(delay, error.delay)
                    log.warning(
                        "event not taken", sensor=self.name, error=str(error), retry_in=wait
                    )
                    await asyncio.sleep(wait)
                else:
                    return

        queue = self.config.queueGroup or f"eventflow-{self.name}"
        for subject in self.config.subjects:
            await nc.subscribe(subject, queue=queue, cb=on_message)
        await nc.flush()
        # The client reconnects forever and resubscribes itself: only cancellation ends this.
        await asyncio.Event().wait()

    async def _consume(self, nc: Client, config: JetStreamConfig, emit: Emit) -> None:
        """JetStream: pull in batches; ack after emit, nak on a bus failure, term on poison."""
        js = nc.jetstream()
        subscription = await self._bind(js, config)
        while not nc.is_closed:
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=_FETCH_WAIT_SECONDS)
            except TimeoutError:
                continue
            except NatsError as error:
                log.warning("sensor fetch failed", sensor=self.name, error=repr(error))
                await asyncio.sleep(self._reconnect_wait)
                continue
            for msg in messages:
                await self._settle(nc, msg, emit)

    async def _bind(
        self, js: JetStreamContext, config: JetStreamConfig
    ) -> JetStreamContext.PullSubscription:
        wanted = ConsumerConfig(
            durable_name=config.consumer,
            deliver_policy=DeliverPolicy(config.deliverPolicy),
            opt_start_time=config.startTime,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=config.ackWaitSeconds,
            max_deliver=config.maxDeliver or -1,
            filter_subject=config.filterSubject,
        )
        # Creating a durable that exists with the same settings is a no-op on the server.
        try:
            await js.add_consumer(config.stream, wanted)
        except APIError as error:
            raise TemporaryError(
                f"jetstream: consumer {config.consumer!r} on stream {config.stream!r} cannot be"
                f" created: {error.description}; create the stream, or give a consumer name"
                " whose existing settings match jetstream.*"
            ) from error
        return await js.pull_subscribe_bind(durable=config.consumer, stream=config.stream)

    async def _settle(self, nc: Client, msg: Msg, emit: Emit) -> None:
        message = _message(msg)
        try:
            poisoned = await self._take(nc, message, emit)
        except TemporaryError as error:
            log.warning("event not taken", sensor=self.name, seq=message.sequence, error=str(error))
            await msg.nak(delay=error.delay)
            return
        # A poison message is terminated: redelivering it could only fail again.
        await (msg.term() if poisoned else msg.ack())

    async def _take(self, nc: Client, message: NatsMessage, emit: Emit) -> bool:
        """Put the message's event (or its poison report) on the bus; True if it was poison."""
        now = self._clock()
        try:
            if self.notifications is None:
                await emit(normalize(message, self.config, now))
            else:
                await self._notification(message, self.notifications, emit)
        except PoisonMessage as poison:
            await self._report(nc, message, poison.reason, emit)
            self.poisoned += 1
            log.error(
                "poison message",
                sensor=self.name,
                subject=message.subject,
                seq=message.sequence,
                reason=poison.reason,
                poisoned=self.poisoned,
            )
            return True
        return False

    async def _notification(
        self, message: NatsMessage, reporter: Reporter[NotificationFilters], emit: Emit
    ) -> None:
        """One payload of payloadFormat s3: its object changes, each on the bus; the payload
        is decoded whole before the first is emitted, so a poison one publishes nothing."""
        check_size(message, self.config)
        try:
            await reporter.report_message(message.data, emit)
        except DecodeError as error:
            raise PoisonMessage(str(error)) from error
        await reporter.purge_due()

    async def _report(self, nc: Client, message: NatsMessage, reason: str, emit: Emit) -> None:
        target = self.config.deadLetterSubject
        if target is None:
            await emit(poison_event(message, reason, self.config, self._clock()))
            return
        headers = {
            **message.headers,
            REASON_HEADER: " ".join(reason.split()),  # a header value is one line
            SUBJECT_HEADER: message.subject,
        }
        try:
            await nc.publish(target, message.data, headers=headers)
            await nc.flush(timeout=int(_FLUSH_SECONDS))
        except (NatsError, TimeoutError) as error:
            raise TemporaryError(
                f"deadLetterSubject {target!r}: the poison message could not be sent ({error!r})",
                delay=self._reconnect_wait,
            ) from error

    async def _on_error(self, error: Exception) -> None:
        log.warning("sensor connection error", sensor=self.name, error=repr(error))

    async def _on_disconnected(self) -> None:
        log.warning("sensor disconnected", sensor=self.name)

    async def _on_reconnected(self) -> None:
        log.info("sensor reconnected", sensor=self.name)
