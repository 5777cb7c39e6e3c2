"""JSON answers and bounded body reading, shared by the API's routers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from eventflow.errors import STOPPING
from eventflow.service import Service


def service_of(request: Request) -> Service:
    """The running service, as a FastAPI dependency."""
    service: Service = request.app.state.service
    return service


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def stopping() -> JSONResponse:
    return error(503, STOPPING, {"Retry-After": "1"})


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialize {type(value).__name__}")


def as_json(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, default=_json_default, ensure_ascii=False)
    return Response(body, status_code=status, media_type="application/json")


class BodyTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body is larger than the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
    return b"".join(chunks)
