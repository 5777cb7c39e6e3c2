"""The listener's HTTP protocol on a real uvicorn server and real sockets: a response written
in one turn of the loop leaves in one send, and nothing HTTP promises is lost by holding the
writes of a turn (pipelined requests, Connection: close, a streamed answer, a refused request).
The transport's own rules are checked on a recording transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from eventflow.api.listener import CoalescingHttpProtocol, CoalescingTransport
from tests.conftest import free_port

ANSWER = b'{"id":"e-1"}'
sends: list[list[bytes]] = []


class RecordingProtocol(CoalescingHttpProtocol):
    """Records what reaches each connection's socket transport, one list per connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        written: list[bytes] = []
        sends.append(written)
        send = transport.write

        def write(data: Any) -> None:
            written.append(bytes(data))
            send(data)

        transport.write = write  # type: ignore[method-assign]
        super().connection_made(transport)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first;", "more_body": True})
        await scope["state"]["go_on"].wait()
        await send({"type": "http.response.body", "body": b"second"})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"12")]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, asyncio.Event]]:
    go_on = asyncio.Event()

    async def with_state(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["state"] = {"go_on": go_on}
        await app(scope, receive, send)

    port = free_port()
    config = uvicorn.Config(
        with_state,
        host="127.0.0.1",
        port=port,
        http=RecordingProtocol,
        lifespan="off",
        log_config=None,
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    while not running.started:
        await asyncio.sleep(0.01)
    sends.clear()
    yield port, go_on
    running.should_exit = True
    await task


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        return await reader.read()


@contextlib.asynccontextmanager
async def connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


POST = b"POST /webhooks/x HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"


async def test_a_response_written_in_one_turn_leaves_in_one_send(server) -> None:
    port, _ = server
    async with connection(port) as (reader, writer):
        writer.write(POST)
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(len(ANSWER))
    assert head.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert body == ANSWER
    [written] = sends
    assert written == [head + body]


async def test_pipelined_requests_are_answered_whole_and_in_order(server) -> None:
    port, _ = server
    async with connection(port) as (reader, writer):
        writer.write(
            POST + POST.replace(b"content-length: 2", b"connection: close\r\ncontent-length: 2")
        )
        received = await read_until_closed(reader)
    assert received.count(b"HTTP/1.1 202 Accepted\r\n") == 2
    assert received.endswith(ANSWER)
    assert received.count(ANSWER) == 2


async def test_connection_close_gets_the_whole_answer_before_the_end(server) -> None:
    port, _ = server
    async with connection(port) as (reader, writer):
        writer.write(POST.replace(b"content-length: 2", b"connection: close\r\ncontent-length: 2"))
        received = await read_until_closed(reader)
    assert received.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert received.endswith(b"\r\n\r\n" + ANSWER)


async def test_a_streamed_answer_leaves_chunk_by_chunk(server) -> None:
    """The first chunk arrives while the app still waits to write the second."""
    port, go_on = server
    async with connection(port) as (reader, writer):
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            first = await reader.readuntil(b"first;\r\n")
        assert not go_on.is_set()
        go_on.set()
        rest = await read_until_closed(reader)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest == b"6\r\nsecond\r\n0\r\n\r\n"


async def test_a_malformed_request_is_refused_then_closed(server) -> None:
    port, _ = server
    async with connection(port) as (reader, writer):
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        received = await read_until_closed(reader)
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert received.endswith(b"Invalid HTTP request received.")


class FakeTransport(asyncio.Transport):
    """Records the calls a CoalescingTransport passes on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", b""))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", b""))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 5


async def test_writes_of_one_turn_are_one_write_at_its_end() -> None:
    fake = FakeTransport()
    transport = CoalescingTransport(fake)
    transport.write(b"head ")
    transport.writelines([b"body", b""])
    assert fake.calls == []
    assert transport.get_write_buffer_size() == 5 + len(b"head body")
    await asyncio.sleep(0)
    assert fake.calls == [("write", b"head body")]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert fake.calls[1:] == [("write", b"next")]


async def test_close_and_write_eof_send_what_is_held_first_and_abort_drops_it() -> None:
    closed, ended, aborted = FakeTransport(), FakeTransport(), FakeTransport()
    for fake, finish in ((closed, "close"), (ended, "write_eof"), (aborted, "abort")):
        transport = CoalescingTransport(fake)
        transport.write(b"held")
        getattr(transport, finish)()
        await asyncio.sleep(0)
    assert closed.calls == [("write", b"held"), ("close", b"")]
    assert ended.calls == [("write", b"held"), ("write_eof", b"")]
    assert aborted.calls == [("abort", b"")]


async def test_what_is_written_after_close_goes_nowhere() -> None:
    fake = FakeTransport()
    transport = CoalescingTransport(fake)
    transport.close()
    transport.write(b"late")
    await asyncio.sleep(0)
    assert fake.calls == [("close", b"")]
