"""`body_arrived` reads uvicorn's request cycle: pinned here against the uvicorn we install, so
that an upgrade that renames what it reads shows up as a failure, not as every webhook quietly
arming a timer again (bench/webhooks.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import uvicorn

from eventflow.api.webhooks import Receive, Scope, Send, body_arrived, read_limited
from tests.conftest import free_port


@dataclass
class Requests:
    """Per request the app served: whether its body had arrived when the app started, and
    the body it then read."""

    arrived: list[bool] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, Requests]]:
    """uvicorn as `eventflow serve` runs it (httptools, asyncio), on an app recording
    `Requests`."""
    requests = Requests()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        requests.arrived.append(body_arrived(receive))
        requests.bodies.append(await read_limited(receive, None, 1_000_000))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="asyncio",
        lifespan="off",
        log_config=None,
    )
    instance = uvicorn.Server(config)
    serving = asyncio.create_task(instance.serve())
    async with asyncio.timeout(10):
        while not instance.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
    try:
        yield port, requests
    finally:
        instance.should_exit = True
        await serving


async def post(port: int, parts: list[bytes], requests: Requests) -> bytes:
    """Send `parts`, each after the app started on the request (the first one: at once)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for number, part in enumerate(parts):
            if number:
                async with asyncio.timeout(5):
                    while not requests.arrived:
                        await asyncio.sleep(0.01)
            writer.write(part)
            await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


HEAD = b"POST /webhooks/x HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n"


async def test_a_body_sent_with_its_headers_has_arrived(
    server: tuple[int, Requests],
) -> None:
    port, requests = server
    assert await post(port, [HEAD + b'{"fast": 1}'], requests) == b"HTTP/1.1 204 No Content\r\n"
    assert (requests.arrived, requests.bodies) == ([True], [b'{"fast": 1}'])


async def test_a_body_still_coming_has_not(server: tuple[int, Requests]) -> None:
    port, requests = server
    assert (
        await post(port, [HEAD + b'{"slow"', b": 1}"], requests) == b"HTTP/1.1 204 No Content\r\n"
    )
    assert (requests.arrived, requests.bodies) == ([False], [b'{"slow": 1}'])


def test_another_servers_receive_has_not() -> None:
    """Without uvicorn's cycle behind `receive`, the body may still be coming."""

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    assert body_arrived(receive) is False
