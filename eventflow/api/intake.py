"""`POST /api/v1/events`: a structured CloudEvent onto the bus, as `eventflow send` does.

Webhook sensors are served by `webhooks.py`, in front of the REST app.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from eventflow.api.responses import (
    BodyTooLargeError,
    as_json,
    error,
    read_body,
    service_of,
    stopping,
)
from eventflow.errors import BusUnavailableError, InvalidEventError
from eventflow.events import Event
from eventflow.service import API_SENSOR, Service

MAX_API_EVENT_BYTES = 1_048_576

router = APIRouter()
ServiceDep = Annotated[Service, Depends(service_of)]


@router.post("/api/v1/events", status_code=202)
async def send_event(request: Request, service: ServiceDep, sensor: str = API_SENSOR) -> Response:
    """Put one structured CloudEvent on the bus, stamped as heard by `sensor`."""
    if not service.accepting:
        return stopping()
    try:
        body = await read_body(request, MAX_API_EVENT_BYTES)
    except BodyTooLargeError as exc:
        return error(413, str(exc))
    try:
        event = Event.from_dict(json.loads(body))
    except ValueError as exc:
        return error(400, f"body is not valid JSON: {exc}")
    except InvalidEventError as exc:
        return error(400, str(exc))
    try:
        received = await service.emit_for(sensor)(event)
    except BusUnavailableError as exc:
        return error(503, str(exc), {"Retry-After": "1"})
    return as_json({"id": received.id}, status=202)
