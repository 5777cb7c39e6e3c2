"""Routes that put events on the bus: webhook sensors, and `POST /api/v1/events`.

Webhook requests are read raw (the bytes a signature covers), bounded by the sensor's body
limit while they stream in, and handed to the sensor, which answers only after the bus took
the event.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

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
from eventflow.sensing.protocol import HttpRequest
from eventflow.service import API_SENSOR, Service

MAX_API_EVENT_BYTES = 1_048_576

router = APIRouter()
ServiceDep = Annotated[Service, Depends(service_of)]


@router.api_route("/webhooks/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def webhook(path: str, request: Request, service: ServiceDep) -> Response:
    sensor = service.http_sensors().get(path.strip("/"))
    if sensor is None:
        return error(404, f"no webhook sensor at /webhooks/{path}")
    if not service.accepting:
        return stopping()
    try:
        body = await read_body(request, sensor.max_body_bytes)
    except BodyTooLargeError as exc:
        return error(413, str(exc))
    reply = await sensor.handle(
        HttpRequest(
            method=request.method,
            path=path,
            headers={name.lower(): value for name, value in request.headers.items()},
            query=dict(request.query_params),
            body=body,
        ),
        service.emit_for(sensor.name),
    )
    return JSONResponse(dict(reply.body), status_code=reply.status, headers=dict(reply.headers))


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
