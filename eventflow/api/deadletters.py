"""Dead letters: the events the bus set aside after too many failed deliveries, or that did
not decode, listed and put back on the bus by a user (`eventflow deadletters list|replay`).

Only a bus that keeps dead letters (`KeepsDeadLetters`) has them; on another (memory) both
routes answer 409 with a reason. This module does not decide when an event becomes one.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from eventflow.api.responses import as_json, error, service_of
from eventflow.bus.protocol import DeadLetter, KeepsDeadLetters
from eventflow.errors import BusUnavailableError, PermanentError
from eventflow.service import Service

router = APIRouter(prefix="/api/v1")
ServiceDep = Annotated[Service, Depends(service_of)]


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """The letter for JSON: its payload as text when it is UTF-8, else base64."""
    try:
        payload, encoding = letter.payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(letter.payload).decode("ascii"), "base64"
    return {
        "id": letter.seq,
        "subject": letter.subject,
        "reason": letter.reason,
        "payload": payload,
        "encoding": encoding,
    }


def _keeper(service: Service) -> KeepsDeadLetters | Response:
    bus = service.bus
    if not isinstance(bus, KeepsDeadLetters):
        return error(
            409,
            f"the bus {service.settings.bus.url} keeps no dead letters; use a nats:// or"
            " kafka:// bus.url to have events that fail every delivery set aside",
        )
    return bus


@router.get("/deadletters")
async def list_dead_letters(service: ServiceDep, limit: int = 100) -> Response:
    """The oldest `limit` dead letters the bus keeps."""
    if not 1 <= limit <= 1000:
        return error(400, f"limit: {limit} is not accepted; use 1 to 1000")
    keeper = _keeper(service)
    if isinstance(keeper, Response):
        return keeper
    try:
        letters = await keeper.list_dead_letters(limit)
    except BusUnavailableError as exc:
        return error(503, str(exc), {"Retry-After": "1"})
    return as_json({"deadletters": [letter_json(letter) for letter in letters]})


@router.post("/deadletters/{seq}/replay", status_code=202)
async def replay_dead_letter(seq: int, service: ServiceDep) -> Response:
    """Put dead letter `seq` back on the bus as a first delivery; it leaves the dead letters."""
    keeper = _keeper(service)
    if isinstance(keeper, Response):
        return keeper
    try:
        await keeper.replay_dead_letter(seq)
    except PermanentError as exc:
        return error(404, str(exc))
    except BusUnavailableError as exc:
        return error(503, str(exc), {"Retry-After": "1"})
    return as_json({"replayed": seq}, status=202)
