"""The webhook sensor: answers the requests eventflow's HTTP listener routes to its path.

It checks the method and the body size, authenticates the delivery on its exact raw body
(401 when it fails, 503 while a configured secret cannot be read: never an open door), drops
the credential headers, lets `normalizing.py` turn the request into events, and answers 202
only after `emit` returned for every one of them, that is once the bus holds them (promise 1:
nothing is acknowledged that the bus did not take). It does not listen on a socket or parse
HTTP: the listener owns the connection; `auth.py` holds the checks, `secrets.py` the reading.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import structlog

from eventflow.errors import BusUnavailableError
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest
from eventflow.sensing.secrets import REFRESH_SECONDS, SecretCache, SecretRead
from sensors.webhook.auth import (
    DEFAULT_TOLERANCE_SECONDS,
    PRESETS,
    AuthError,
    verify_basic,
    verify_bearer,
    verify_hmac,
    verify_slack,
    verify_stripe,
)
from sensors.webhook.config import AuthConfig, WebhookConfig
from sensors.webhook.normalizing import RequestError, is_batch, normalize

log = structlog.get_logger()


UNAVAILABLE = "webhook secret not available; send the delivery again later"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def verify_delivery(
    auth: AuthConfig,
    secrets: SecretRead,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> None:
    """Return when the delivery passes `auth` with the secrets read; raise AuthError if not.

    `headers` has lower-case names.
    """
    if auth.basic is not None:
        users = [user.username for user in auth.basic.users]
        pairs = [(user, value) for user, value in zip(users, secrets.values, strict=True) if value]
        verify_basic(headers, pairs)
    elif auth.bearer is not None:
        verify_bearer(headers, secrets.available)
    elif auth.hmac is not None:
        verify_hmac(auth.hmac.to_scheme(), headers, body, secrets.available, now)
    elif auth.preset in ("stripe", "slack"):
        verify = verify_stripe if auth.preset == "stripe" else verify_slack
        tolerance = auth.toleranceSeconds or DEFAULT_TOLERANCE_SECONDS
        verify(headers, body, secrets.available, now, tolerance)
    else:
        PRESETS[str(auth.preset)](headers, body, secrets.available, now)


class WebhookSensor:
    """One webhook endpoint, /webhooks/<config.path>."""

    def __init__(
        self, name: str, config: WebhookConfig, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._secrets = None if config.auth is None else SecretCache(config.auth.sources, clock())

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
        now = self._clock()
        refusal = self._authenticate(request, now)
        if refusal is not None:
            return refusal
        # A template or a binary-mode ce-* header must not copy a credential into the event.
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in self.config.credential_headers
        }
        try:
            events = normalize(dataclasses.replace(request, headers=headers), self.config, now)
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

    def _authenticate(self, request: HttpRequest, now: datetime) -> HttpReply | None:
        """None when the delivery may go on; otherwise the 401 or 503 to answer."""
        auth, secrets = self.config.auth, self._secrets
        if auth is None or secrets is None:
            return None
        headers = {name.lower(): value for name, value in request.headers.items()}

        def failure() -> AuthError | None:
            try:
                verify_delivery(auth, secrets.current, headers, request.body, now)
            except AuthError as error:
                return error
            return None

        error = failure()
        # A rotated or newly mounted Secret may be the cause: read again, but not every time.
        if error is not None and secrets.refresh(now):
            error = failure()
        return None if error is None else self._refuse(error, secrets.current)

    def _refuse(self, error: AuthError, secrets: SecretRead) -> HttpReply:
        # With a secret missing, a mismatch may be ours, not the sender's: ask for a retry.
        if secrets.missing:
            log.error("webhook secret not available", sensor=self.name, missing=secrets.missing)
            return HttpReply(503, {"error": UNAVAILABLE}, {"Retry-After": f"{REFRESH_SECONDS:.0f}"})
        log.warning("delivery refused", sensor=self.name, detail=error.detail)
        challenge = {} if error.challenge is None else {"WWW-Authenticate": error.challenge}
        return HttpReply(401, {"error": error.message}, challenge)

    def _reject(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> HttpReply:
        log.info("webhook rejected", sensor=self.name, status=status, error=message)
        return HttpReply(status, {"error": message}, headers or {})
