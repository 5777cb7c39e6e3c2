"""Reading a durable JetStream pull consumer with the next batch already on its way.

One pull request for `batch` messages is kept open on the consumer's subject; the server
sends messages as they arrive, so a lone event is not held back waiting for a full batch.
When the request is used up (or expires) and the engine has taken half of what is buffered,
the next request goes out: the engine handles one batch while the next one travels. At most
`batch` messages are requested-or-buffered at a time, so a slow engine is not flooded (their
ack_wait runs from delivery).

nats-py's `fetch` costs a request, a task, a timer and a uuid per message and leaves the
consumer without a pull while the engine works; that made the consumer the bottleneck in
bench/bus.py.

A request the server forgot (a reconnect, a lost status) is replaced when nothing arrived for
its lifetime plus a margin. This module does not decode, ack or dead-letter messages: the bus
does (nats.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

log = structlog.get_logger()

_STATUS = "Status"
_DESCRIPTION = "Description"
_HEARTBEAT = "100"
_EXPIRED = "408"
_FORGOTTEN_MARGIN_SECONDS = 1.0


class Puller:
    """One replica's reader of a durable pull consumer; `next` gives messages in order."""

    def __init__(
        self, client: Client, *, stream: str, durable: str, batch: int, expires_seconds: float
    ) -> None:
        self._client = client
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._durable = durable
        self._batch = batch
        self._request = json.dumps(
            {"batch": batch, "expires": int(expires_seconds * 1_000_000_000)}
        ).encode()
        self._wait = expires_seconds + _FORGOTTEN_MARGIN_SECONDS
        self._buffer: collections.deque[Msg] = collections.deque()
        self._arrived = asyncio.Event()
        self._requested = 0  # messages the open request may still bring
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._stopped = False

    async def start(self) -> None:
        self._inbox = self._client.new_inbox()
        self._subscription = await self._client.subscribe(self._inbox, cb=self._on_message)
        await self._top_up()

    async def next(self) -> Msg | None:
        """The next message; None once stopped."""
        while not self._buffer:
            if self._stopped:
                return None
            self._arrived.clear()
            try:
                async with asyncio.timeout(self._wait):
                    await self._arrived.wait()
            except TimeoutError:
                # Not even the expiry status came back: the server lost the request.
                self._requested = 0
                await self._top_up()
        if self._stopped:
            return None
        msg = self._buffer.popleft()
        if self._requested <= 0:
            await self._top_up()
        return msg

    async def pull_again(self) -> None:
        """After a reconnect: the server dropped the open request with the old connection."""
        self._requested = 0
        await self._top_up()

    async def stop(self) -> None:
        """Stop pulling; buffered messages go back to the consumer for other replicas."""
        if self._stopped:
            return
        self._stopped = True
        self._arrived.set()
        buffered, self._buffer = list(self._buffer), collections.deque()
        with contextlib.suppress(NatsError):
            if self._subscription is not None:
                await self._subscription.unsubscribe()
            for msg in buffered:
                await msg.nak()

    async def _top_up(self) -> None:
        """Open the next request once the last is used up and half the buffer is taken."""
        if self._stopped or self._requested > 0 or len(self._buffer) > self._batch // 2:
            return
        self._requested = self._batch
        try:
            await self._client.publish(self._next_subject, self._request, reply=self._inbox)
        except NatsError as error:
            # The wait in `next` sends it again.
            log.warning("bus pull not sent", group=self._durable, error=repr(error))

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            self._requested -= 1
            self._buffer.append(msg)
            self._arrived.set()
            return
        if status == _HEARTBEAT:
            return
        self._requested = 0
        self._arrived.set()  # `next` starts its wait for a forgotten request over
        if status == _EXPIRED:
            await self._top_up()
            return
        # 409 and the like (consumer deleted, leadership change): the request is over, and
        # asking again at once could spin; `next` asks again after its wait.
        assert headers is not None
        log.warning(
            "bus pull ended",
            group=self._durable,
            status=status,
            description=headers.get(_DESCRIPTION, ""),
        )
