"""The webhook sensor: answers the requests eventflow's HTTP listener routes to its path.

It checks the method and the body size, lets `normalizing.py` turn the request into events,
and answers 202 only after `emit` returned for every one of them, that is once the bus holds
them (promise 1: nothing is acknowledged that the bus did not take). It does not listen on a
socket, parse HTTP or verify signatures: the listener owns the connection.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from eventflow.errors import BusUnavailableError
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest
from sensors.webhook.config import WebhookConfig
from sensors.webhook.normalizing import RequestError, is_batch, normalize

log = structlog.get_logger()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class WebhookSensor:
    """One webhook endpoint, /webhooks/<config.path>."""

    def __init__(
        self, name: str, config: WebhookConfig, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock

    @property
    def path(self) -> str:
        return self.config.path

    @property
    def max_body_bytes(self) -> int:
        return self.config.maxBodyBytes

    async def run(self, emit: Emit) -> None:
        """Requests arrive through `handle`; there is nothing to pull, so wait until cancelled."""
        await asyncio.Event().wait()

    async def handle(self, request: HttpRequest, emit: Emit) -> HttpReply:
        method = request.method.upper()
        if method not in self.config.methods:
            allowed = ", ".join(self.config.methods)
            return self._reject(
                405,
                f"method {method} is not allowed on /webhooks/{self.path}; use {allowed}",
                headers={"Allow": allowed},
            )
        if len(request.body) > self.max_body_bytes:
            # The listener answers 413 before calling us; this keeps the limit when it does not.
            return self._reject(
                413,
                f"body is larger than {self.max_body_bytes} bytes, the maxBodyBytes of"
                f" sensor {self.name}",
            )
        try:
            events = normalize(request, self.config, self._clock())
        except RequestError as error:
            return self._reject(error.status, error.message)
        ids = []
        for event in events:
            try:
                await emit(event)
            except BusUnavailableError as error:
                log.warning(
                    "event not taken", sensor=self.name, event_id=event.id, error=str(error)
                )
                return HttpReply(
                    503,
                    {"error": str(error)},
                    {"Retry-After": str(max(1, math.ceil(error.delay)))},
                )
            ids.append(event.id)
        if is_batch(request):
            return HttpReply(202, {"ids": ids})
        return HttpReply(202, {"id": ids[0]})

    def _reject(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> HttpReply:
        log.info("webhook rejected", sensor=self.name, status=status, error=message)
        return HttpReply(status, {"error": message}, headers or {})
