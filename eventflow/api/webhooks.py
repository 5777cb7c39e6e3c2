"""The webhook listener: raw ASGI for `/webhooks/<path>`, in front of the REST app.

Webhook intake is the hot path, so no framework work sits between the socket and the
sensor: the body is read raw (the bytes a signature covers), refused as soon as it passes
the sensor's limit (413), and handed to the sensor, which answers only after the bus took the
event. Every answer is JSON; an error is `{"error": "..."}`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from eventflow.api.responses import BodyTooLargeError
from eventflow.sensing.protocol import HttpReply, HttpRequest
from eventflow.service import Service

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/webhooks/"


async def read_limited(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, refused once it passes `limit` bytes (declared or as it streams)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def headers_of(scope: Scope) -> dict[str, str]:
    """Lower-cased header names; repeated headers joined with ', ' as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def answer(send: Send, reply: HttpReply) -> None:
    body = json.dumps(reply.body, separators=(",", ":")).encode()
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


def with_webhooks(service: Service, rest: ASGIApp) -> ASGIApp:
    """An ASGI app that serves /webhooks/ itself and passes everything else to `rest`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await rest(scope, receive, send)
            return
        await answer(send, await handle(scope, receive))

    async def handle(scope: Scope, receive: Receive) -> HttpReply:
        path = scope["path"][len(PREFIX) :].strip("/")
        sensor = service.http_sensor(path)
        if sensor is None:
            return refuse(404, f"no webhook sensor at {PREFIX}{path}")
        if not service.accepting:
            return refuse(503, "eventflow is stopping; send the event again", {"Retry-After": "1"})
        headers = headers_of(scope)
        try:
            body = await read_limited(receive, headers.get("content-length"), sensor.max_body_bytes)
        except BodyTooLargeError as error:
            return refuse(413, str(error))
        request = HttpRequest(
            method=scope["method"],
            path=path,
            headers=headers,
            query=dict(parse_qsl(scope["query_string"].decode("latin-1"))),
            body=body,
        )
        return await sensor.handle(request, service.emit_for(sensor.name))

    return app
