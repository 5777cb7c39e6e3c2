"""An intake worker's way to the REST API: every request that is not a webhook is passed to
the main process over its private Unix socket, and the answer streamed back as it comes.

The workers hold the listener, so a REST call, `/readyz` or a run's log may arrive at any of
them; the main process answers it as if it had come straight (tokens included: they are
checked there). The body of a request is read whole first (REST bodies are small); the
answer is streamed (a step's log may be long). Hop-by-hop headers stay on their hop.
"""

from __future__ import annotations

from typing import Any

import httpx
import structlog

from eventflow.api.webhooks import Receive, Scope, Send, SenderGoneError, answer, refuse

log = structlog.get_logger()

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
CONNECT_TIMEOUT_SECONDS = 5.0


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise SenderGoneError
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _passed(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]


class MainProcessProxy:
    """An ASGI app passing HTTP requests to the main process at the Unix socket `path`."""

    def __init__(self, path: str) -> None:
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=path),
            # A log followed live may stay silent for long: only connecting is bounded.
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_SECONDS),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _body(receive)
        except SenderGoneError:
            return
        target = httpx.URL(
            scheme="http",
            host="eventflow",
            path=scope["path"],
            query=scope["query_string"],
        )
        request = self._client.build_request(
            scope["method"], target, headers=_passed(scope["headers"]), content=body
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as error:
            log.warning("main process not answering", path=scope["path"], error=str(error))
            await answer(
                send,
                refuse(503, "eventflow is starting or stopping; try again", {"Retry-After": "1"}),
            )
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _passed(response.headers.raw),
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()
