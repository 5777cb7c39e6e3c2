"""The webhook listener: raw ASGI for `/webhooks/<path>`, in front of the REST app.

Webhook intake is the hot path, so no framework work sits between the socket and the
sensor: the body is read raw (the bytes a signature covers), refused as soon as it passes
the sensor's limit (413), and handed to the sensor, which answers only after the bus took the
event. The listener's own limits come first (`api.*` settings): requests in progress at once
(503 with Retry-After), header bytes (431), and the time a body may take to arrive (408, so a
slow sender cannot hold a slot). Every answer is JSON; an error is `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

from eventflow import jsoncodec
from eventflow.api.responses import BodyTooLargeError
from eventflow.errors import STOPPING
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest, HttpSensor
from eventflow.settings import ApiSettings, Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/webhooks/"


class WebhookHost(Protocol):
    """What the listener needs of the process it runs in: the main service or an intake
    worker."""

    @property
    def settings(self) -> Settings: ...

    @property
    def accepting(self) -> bool:
        """False once the process is stopping: new deliveries are answered 503."""
        ...

    def http_sensor(self, path: str) -> HttpSensor | None: ...

    def emit_for(self, sensor: str) -> Emit: ...


class SenderGoneError(Exception):
    """The sender hung up before its body was complete."""


async def read_limited(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, refused once it passes `limit` bytes (declared or as it streams).

    SenderGoneError when the sender disconnects first: a partial body must not be taken for
    a whole one, as `{"a": 1}` cut from `{"a": 1, "b": 2}` would be."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise SenderGoneError
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def body_arrived(receive: Receive) -> bool:
    """Whether the server holds the whole body already, so reading it cannot wait and needs no
    timer: uvicorn's request cycle, whose `receive` this is, sets `more_body` false once the
    request is complete (most webhooks arrive in one read). False for any other server."""
    return getattr(getattr(receive, "__self__", None), "more_body", True) is False


def headers_of(scope: Scope) -> dict[str, str]:
    """Lower-cased header names; repeated headers joined with ', ' as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def answer(send: Send, reply: HttpReply) -> None:
    body = jsoncodec.dumps(reply.body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in reply.headers.items()
        ),
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def refuse(status: int, message: str, headers: Mapping[str, str] | None = None) -> HttpReply:
    return HttpReply(status, {"error": message}, dict(headers or {}))


def header_bytes(scope: Scope) -> int:
    """The size of the request's header names and values, as received."""
    return sum(len(name) + len(value) for name, value in scope["headers"])


def tune_collector_for_intake() -> None:
    """Set the garbage collector for a process that answers webhooks; call once started up.

    Each webhook's parsed body is hundreds of short-lived objects: at the default threshold
    (700) the collector ran so often, over a heap of imported modules, that its pauses made
    the p99 of webhook answers ~100 ms; 20,000 brought it to ~35 ms (bench/webhooks.py).
    Freezing moves what was loaded at start out of every later collection's way.
    """
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def with_webhooks(service: WebhookHost, rest: ASGIApp) -> ASGIApp:
    """An ASGI app that serves /webhooks/ itself and passes everything else to `rest`."""
    in_progress = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal in_progress
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await rest(scope, receive, send)
            return
        # Read per request, so that a reload of the settings applies to the next one.
        limits = service.settings.api
        if in_progress >= limits.max_concurrent_requests:
            await answer(send, busy(limits))
            return
        in_progress += 1
        try:
            await answer(send, await handle(scope, receive, limits))
        except SenderGoneError:
            return  # nobody to answer, and a cut body is never parsed
        finally:
            in_progress -= 1

    def busy(limits: ApiSettings) -> HttpReply:
        return refuse(
            503,
            f"{limits.max_concurrent_requests} webhook requests are in progress, the"
            " api.max_concurrent_requests limit; send the delivery again",
            {"Retry-After": "1"},
        )

    async def handle(scope: Scope, receive: Receive, limits: ApiSettings) -> HttpReply:
        if header_bytes(scope) > limits.max_header_bytes:
            return refuse(
                431,
                f"request headers are larger than {limits.max_header_bytes} bytes, the"
                " api.max_header_bytes limit",
            )
        path = scope["path"][len(PREFIX) :].strip("/")
        sensor = service.http_sensor(path)
        if sensor is None:
            return refuse(404, f"no webhook sensor at {PREFIX}{path}")
        if not service.accepting:
            return refuse(503, STOPPING, {"Retry-After": "1"})
        headers = headers_of(scope)
        try:
            reading = read_limited(receive, headers.get("content-length"), sensor.max_body_bytes)
            if body_arrived(receive):
                body = await reading
            else:
                async with asyncio.timeout(limits.request_timeout_seconds):
                    body = await reading
        except BodyTooLargeError as error:
            return refuse(413, str(error))
        except TimeoutError:
            return refuse(
                408,
                f"the body did not arrive within {limits.request_timeout_seconds:g} seconds,"
                " the api.request_timeout_seconds limit; send it again",
            )
        request = HttpRequest(
            method=scope["method"],
            path=path,
            headers=headers,
            query=dict(parse_qsl(scope["query_string"].decode("latin-1"))),
            body=body,
        )
        return await sensor.handle(request, service.emit_for(sensor.name))

    return app
