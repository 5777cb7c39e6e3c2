"""Publishing to JetStream with many PubAcks awaited at once, on the bus's core connection.

One wildcard inbox subscription receives every PubAck; each publish waits on a future keyed
by the token that ends its reply subject. nats-py's `publish_async` works the same way but
spends, per message, a `wait_for` on its semaphore, a done-callback, random token bytes and a
PubAck dataclass: the largest share of a publish's CPU in bench/bus.py. Deadlines are checked
by one sweeper task for all pending publishes instead of a timer per publish.

A publish still returns only after the stream's PubAck for that very message. When the
connection drops, every pending publish fails at once (the sender resends; the stream's
duplicate window drops a resend of a message that was stored after all).

This module does not retry, does not build subjects or headers, and does not know events.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = structlog.get_logger()

_STATUS = "Status"
_DESCRIPTION = "Description"
_NO_RESPONDERS = "503"
_SWEEP_SECONDS = 0.1


class PublishFailedError(Exception):
    """A publish got no PubAck: the reason, in words a user can act on."""


class PubAckMux:
    """Up to `max_in_flight` publishes pending at once, each resolved by its own PubAck."""

    def __init__(self, client: Client, *, max_in_flight: int, timeout_seconds: float) -> None:
        self._client = client
        self._timeout = timeout_seconds
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tokens = itertools.count()
        # token -> (deadline on the loop clock, future); insertion order is deadline order
        # except for a publish that waited for a slot, which the sweep still finds.
        self._pending: dict[str, tuple[float, asyncio.Future[None]]] = {}
        self._prefix = ""
        self._subscription: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        inbox = self._client.new_inbox()
        self._prefix = f"{inbox}."
        self._subscription = await self._client.subscribe(f"{inbox}.*", cb=self._on_reply)
        self._sweeper = asyncio.create_task(self._sweep(), name="nats-puback-sweeper")

    async def close(self) -> None:
        """Fail what is pending, stop the sweeper and the inbox subscription."""
        self.fail_all("the bus is closing")
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()

    @property
    def pending(self) -> int:
        """Publishes sent and still waiting for their PubAck."""
        return len(self._pending)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Send, then wait for the PubAck; PublishFailedError with the server's reason if none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        if self._slots.locked():
            # Only a full window pays for a timer: the wait for a slot shares the deadline.
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                raise PublishFailedError(
                    f"no PubAck within {self._timeout:g}s: {self.pending} publishes were"
                    " already waiting for theirs"
                ) from None
        else:
            await self._slots.acquire()
        token = str(next(self._tokens))
        future: asyncio.Future[None] = loop.create_future()
        self._pending[token] = (deadline, future)
        try:
            await self._client.publish(
                subject, payload, reply=self._prefix + token, headers=headers
            )
            await future
        finally:
            self._pending.pop(token, None)
            self._slots.release()

    def fail_all(self, reason: str) -> None:
        """Fail every pending publish with `reason` (the connection dropped, or closing)."""
        pending, self._pending = self._pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(PublishFailedError(reason))

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if entry is None or entry[1].done():
            return  # a late PubAck of a publish that timed out or was failed
        future = entry[1]
        headers = msg.headers
        if headers and headers.get(_STATUS) == _NO_RESPONDERS:
            future.set_exception(PublishFailedError("no stream takes this subject (no responders)"))
            return
        # A PubAck is {"stream": ..., "seq": ...}; only an error needs decoding.
        if b'"error"' in msg.data:
            future.set_exception(PublishFailedError(self._error_of(msg.data)))
            return
        future.set_result(None)

    @staticmethod
    def _error_of(data: bytes) -> str:
        try:
            error = json.loads(data)["error"]
            return f"JetStream refused it: {error['description']} (code {error['err_code']})"
        except (ValueError, KeyError, TypeError):
            return f"JetStream answered {data[:200]!r}"

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now = loop.time()
            expired = [token for token, (deadline, _) in self._pending.items() if deadline <= now]
            for token in expired:
                _, future = self._pending.pop(token)
                if not future.done():
                    future.set_exception(PublishFailedError(f"no PubAck within {self._timeout:g}s"))
