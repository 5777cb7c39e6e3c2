"""The local channel between `eventflow serve` and its intake workers (`api.intake_workers`).

One Unix socket in a private directory; each worker holds one connection to it for its life:
- publish, worker -> main: on the embedded bus a worker's events go onto the main process's
  memory bus. The answer comes once the bus holds the event, or says why it was refused and
  when to try again; a worker answers its webhook only then (promise 1). On NATS or Kafka the
  workers publish to the broker themselves and this part is idle.
- store, worker -> main: a worker's sensors keep their state (a webhook's redelivery ledger)
  in the main process's store, and read the registered webhooks from it: one writer to a
  SQLite file, and no connection of the workers' own (`store.py` says what a request holds);
- reload, main -> worker: after each change of the main process's sensors (a reload, a
  webhook registered or removed), every worker applies it before the change is answered, so
  a webhook registered through the API is served by all the workers once the API said 201.
- ready, worker -> main: the worker loaded its sensors and answers from now on;
- the main process going away closes the connection, and the worker stops: no worker outlives
  the process it takes events for.

A frame is: 4-byte big-endian length of the rest, 1-byte kind, 8-byte request number, payload.
Many requests are in flight on one connection; the frames written in one turn of the event
loop leave in one send. This module does not parse HTTP or know sensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from itertools import count
from pathlib import Path

import orjson
import structlog

from eventflow.errors import STOPPING, BusUnavailableError, EventflowError
from eventflow.events import ReceivedEvent

log = structlog.get_logger()

_HEADER = struct.Struct(">IcQ")
_LENGTH = struct.Struct(">I")
_KIND_NUMBER = struct.Struct(">cQ")
_MAX_FRAME = 64 * 1024 * 1024
"""Far above any event a sensor accepts; a longer frame means a broken peer, not an event."""

PUBLISH = b"P"
ACCEPTED = b"A"
REFUSED = b"N"
RELOAD = b"R"
RELOADED = b"D"
READY = b"Y"
STORE = b"S"
STORE_DONE = b"T"
STORE_FAILED = b"F"

Publish = Callable[[ReceivedEvent], Awaitable[None]]
Serve = Callable[[bytes], Awaitable[bytes]]
"""Answer a request's payload; an exception is the request's failure, its text the reason."""
Reload = Callable[[], Awaitable[list[str]]]
"""Apply the current configuration; the problems that kept it from applying (none: applied)."""


class ChannelClosedError(EventflowError):
    """The other end of the channel went away."""


class RequestFailedError(EventflowError):
    """The main process could not serve a request; the message says why."""


class _Frames:
    """One connection's frames: read one at a time, written in batches per loop turn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False

    async def read(self) -> tuple[bytes, int, bytes]:
        """The next frame as (kind, number, payload); ChannelClosedError at the end."""
        try:
            (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
            if not _KIND_NUMBER.size <= length <= _MAX_FRAME:
                raise ChannelClosedError(f"a frame of {length} bytes: the peer is not eventflow")
            frame = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise ChannelClosedError("the channel closed") from error
        kind, number = _KIND_NUMBER.unpack_from(frame)
        return kind, number, frame[_KIND_NUMBER.size :]

    def send(self, kind: bytes, number: int, payload: bytes = b"") -> None:
        self._outgoing.append(_HEADER.pack(_KIND_NUMBER.size + len(payload), kind, number))
        self._outgoing.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if not self._writer.is_closing():
            self._writer.writelines(outgoing)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


def _refusal(error: Exception, delay: float) -> bytes:
    return orjson.dumps({"error": str(error), "delay": delay})


class _Requests:
    """Answers awaited by request number."""

    def __init__(self) -> None:
        self._numbers = count(1)
        self.waiting: dict[int, asyncio.Future[tuple[bytes, bytes]]] = {}

    def new(self) -> tuple[int, asyncio.Future[tuple[bytes, bytes]]]:
        number = next(self._numbers)
        answer: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()
        self.waiting[number] = answer
        return number, answer

    def answer(self, number: int, kind: bytes, payload: bytes) -> None:
        waiting = self.waiting.pop(number, None)
        if waiting is not None and not waiting.done():
            waiting.set_result((kind, payload))

    def fail_all(self, error: Exception) -> None:
        waiting, self.waiting = self.waiting, {}
        for answer in waiting.values():
            if not answer.done():
                answer.set_exception(error)


class _WorkerConnection:
    """The main process's view of one worker's connection."""

    def __init__(self, frames: _Frames) -> None:
        self.frames = frames
        self.requests = _Requests()
        self.ready = False


class MainEnd:
    """The main process's end: serves the workers' publishes with `publish`, asks them to
    reload, and knows how many are connected."""

    def __init__(self, path: Path, publish: Publish, serve_store: Serve) -> None:
        self._path = path
        self._publish = publish
        self._serve_store = serve_store
        self._store_requests: set[asyncio.Task[None]] = set()
        self._connections: set[_WorkerConnection] = set()
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None

    @property
    def ready(self) -> int:
        """How many workers are connected and answering."""
        return sum(connection.ready for connection in self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._path))

    async def wait_ready(self, workers: int) -> None:
        """Return once `workers` workers are connected and answering."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.ready >= workers)

    async def reload_workers(self, within_seconds: float) -> None:
        """Have every connected worker apply the current configuration; log any that did not
        within `within_seconds`, or refused it (it keeps serving its previous one)."""
        # A worker still starting answers once its first load is done, then loads anew: a
        # change made while it was loading is not lost.
        asked = [(connection, *connection.requests.new()) for connection in self._connections]
        for connection, number, _ in asked:
            connection.frames.send(RELOAD, number)
        if not asked:
            return
        done, late = await asyncio.wait([answer for _, _, answer in asked], timeout=within_seconds)
        for answer in late:
            answer.cancel()
        if late:
            log.error(
                "intake workers did not reload in time", workers=len(late), seconds=within_seconds
            )
        for answer in done:
            if answer.exception() is not None:
                continue  # that worker is gone; its successor loads the configuration anew
            _, payload = answer.result()
            problems = orjson.loads(payload)
            if problems:
                log.error("intake worker kept its previous configuration", problems=problems)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._store_requests):
            task.cancel()
        await asyncio.gather(*self._store_requests, return_exceptions=True)
        for connection in list(self._connections):
            await connection.frames.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _WorkerConnection(_Frames(reader, writer))
        async with self._changed:
            self._connections.add(connection)
            self._changed.notify_all()
        try:
            while True:
                kind, number, payload = await connection.frames.read()
                if kind == PUBLISH:
                    # The memory bus takes an event without waiting, so serving the publishes
                    # one after the other keeps each worker's events in their order.
                    await self._serve_publish(connection.frames, number, payload)
                elif kind == STORE:
                    # Store requests wait on the store: served beside the publishes.
                    task = asyncio.create_task(
                        self._answer_store(connection.frames, number, payload)
                    )
                    self._store_requests.add(task)
                    task.add_done_callback(self._store_requests.discard)
                elif kind == RELOADED:
                    connection.requests.answer(number, kind, payload)
                elif kind == READY:
                    async with self._changed:
                        connection.ready = True
                        self._changed.notify_all()
                else:
                    log.error("intake worker sent an unknown frame", kind=kind.hex())
                    return
        except ChannelClosedError:
            pass
        finally:
            connection.requests.fail_all(ChannelClosedError("the worker went away"))
            async with self._changed:
                self._connections.discard(connection)
                self._changed.notify_all()
            await connection.frames.close()

    async def _answer_store(self, frames: _Frames, number: int, payload: bytes) -> None:
        try:
            answer = await self._serve_store(payload)
        except Exception as error:  # the worker's sensor gets the reason, as from a store
            frames.send(STORE_FAILED, number, str(error).encode())
        else:
            frames.send(STORE_DONE, number, answer)

    async def _serve_publish(self, frames: _Frames, number: int, payload: bytes) -> None:
        try:
            # The worker's sensor read the data to take the event: it is read again here only
            # if a trigger looks at it.
            await self._publish(ReceivedEvent.decode(payload, data_read=True))
        except BusUnavailableError as error:
            frames.send(REFUSED, number, _refusal(error, error.delay))
        except EventflowError as error:
            log.error("intake worker sent an event the bus refused", error=str(error))
            frames.send(REFUSED, number, _refusal(error, 1.0))
        else:
            frames.send(ACCEPTED, number)


class WorkerEnd:
    """A worker's end: publishes to the main process's bus, reloads when asked to.

    `closed` is set when the main process went away: the worker then stops."""

    def __init__(self, path: Path, reload: Reload) -> None:
        self._path = path
        self._reload = reload
        self._requests = _Requests()
        self._frames: _Frames | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    async def connect(self) -> None:
        reader, writer = await asyncio.open_unix_connection(str(self._path))
        self._frames = _Frames(reader, writer)
        self._reader_task = asyncio.create_task(self._read(self._frames), name="channel-read")

    @property
    def connected(self) -> bool:
        return self._frames is not None and not self.closed.is_set()

    async def publish(self, event: ReceivedEvent) -> None:
        """Return once the main process's bus holds `event`; BusUnavailableError if not."""
        try:
            kind, payload = await self._ask(PUBLISH, event.encode())
        except ChannelClosedError:
            raise BusUnavailableError(STOPPING, delay=1.0) from None
        if kind != ACCEPTED:
            refusal = orjson.loads(payload)
            raise BusUnavailableError(refusal["error"], delay=refusal["delay"])

    def ready(self) -> None:
        """Tell the main process this worker answers from now on."""
        if self._frames is not None:
            self._frames.send(READY, 0)

    async def ask_store(self, payload: bytes) -> bytes:
        """The main process's answer to a store request; RequestFailedError with its reason,
        ChannelClosedError if the main process is gone."""
        kind, reply = await self._ask(STORE, payload)
        if kind != STORE_DONE:
            raise RequestFailedError(reply.decode())
        return reply

    async def _ask(self, kind: bytes, payload: bytes) -> tuple[bytes, bytes]:
        """The main process's answer (its kind and payload) to a request; ChannelClosedError
        if the main process is gone, or goes before it answers."""
        if self._frames is None or self.closed.is_set():
            raise ChannelClosedError("the main process is gone")
        number, answer = self._requests.new()
        self._frames.send(kind, number, payload)
        return await answer

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        for task in list(self._reloads):
            task.cancel()
        await asyncio.gather(*self._reloads, return_exceptions=True)
        if self._frames is not None:
            await self._frames.close()
        self._requests.fail_all(ChannelClosedError("the worker is stopping"))
        self.closed.set()

    async def _read(self, frames: _Frames) -> None:
        try:
            while True:
                kind, number, payload = await frames.read()
                if kind == RELOAD:
                    # Publishes keep flowing while the configuration is read again.
                    task = asyncio.create_task(self._answer_reload(frames, number))
                    self._reloads.add(task)
                    task.add_done_callback(self._reloads.discard)
                else:
                    self._requests.answer(number, kind, payload)
        except ChannelClosedError:
            log.warning("the main eventflow process went away; this intake worker stops")
        finally:
            self._requests.fail_all(ChannelClosedError("the main process went away"))
            self.closed.set()

    async def _answer_reload(self, frames: _Frames, number: int) -> None:
        problems = await self._reload()
        frames.send(RELOADED, number, orjson.dumps(problems))
