"""The webhook sensor: answers the requests eventflow's HTTP listener routes to its path.

It checks the method (405) and the body size (413), authenticates the delivery on its exact
raw body (401 when it fails, 503 while a configured secret cannot be read: never an open door),
applies the endpoint's rate limit (429, after authentication so that strangers cannot use up a
provider's budget), drops the credential headers, lets `normalizing.py` turn the request into
events, skips the redeliveries `deduplicating.py` has seen (200 with the first event's id), and
answers 202 only after `emit` returned for every other one, that is once the bus holds them
(promise 1: nothing is acknowledged that the bus did not take; 503 when it cannot). It does not
listen on a socket or parse HTTP: the listener owns the connection; `auth.py` holds the checks,
`secrets.py` the reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import structlog

from eventflow.errors import BusUnavailableError
from eventflow.sensing.limiting import ProcessRateLimits, RateLimits, retry_after
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest, SensorState
from eventflow.sensing.secrets import REFRESH_SECONDS, SecretCache, SecretRead
from eventflow.sensing.state import MemorySensorState
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
from sensors.webhook.deduplicating import DeliveryLedger
from sensors.webhook.headers import without_secrets
from sensors.webhook.normalizing import Delivery, RequestError, deliveries, is_batch

log = structlog.get_logger()


UNAVAILABLE = "webhook secret not available; send the delivery again later"
PURGE_SECONDS = 3600.0
"""How often the sensor drops the delivery keys whose dedupe window has passed."""


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
        self,
        name: str,
        config: WebhookConfig,
        clock: Callable[[], datetime] = _utc_now,
        state: SensorState | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._secrets = None if config.auth is None else SecretCache(config.auth.sources, clock())
        self._kept = config.kept_headers
        self._secret_headers = config.credential_headers
        self._ledger = DeliveryLedger(
            name, MemorySensorState(clock) if state is None else state, config.dedupe.window
        )
        self._rate_limits = ProcessRateLimits() if rate_limits is None else rate_limits

    @property
    def path(self) -> str:
        return self.config.path

    @property
    def max_body_bytes(self) -> int:
        return self.config.maxBodyBytes

    async def run(self, emit: Emit) -> None:
        """Requests arrive through `handle`; until cancelled, drop expired delivery keys."""
        try:
            while True:
                await self._ledger.purge(self._clock())
                await asyncio.sleep(PURGE_SECONDS)
        finally:
            # Stopping: what was published is remembered before the store closes.
            await self._ledger.flush()

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
        # The listener lower-cases names already; a test or the test kit may not.
        lowered = {name.lower(): value for name, value in request.headers.items()}
        refusal = self._authenticate(lowered, request.body, now) or await self._limit(now)
        if refusal is not None:
            return refusal
        # A template or a binary-mode ce-* header must not copy a credential into the event.
        headers = without_secrets(lowered, self._secret_headers)
        try:
            found = deliveries(request, self.config, now, kept=self._kept, headers=headers)
        except RequestError as error:
            return self._reject(error.status, error.message)
        keys = [delivery.key for delivery in found if delivery.key is not None]
        batch = is_batch(lowered.get("content-type"))
        async with self._ledger.holding(keys, now) as seen:
            return await self._publish(found, seen, emit, now, batch=batch)

    async def _publish(
        self,
        found: Sequence[Delivery],
        seen: Mapping[str, str],
        emit: Emit,
        now: datetime,
        *,
        batch: bool,
    ) -> HttpReply:
        """Emit what was not seen, remember it, and answer for the whole request."""
        ids: list[str] = []
        duplicates: list[str] = []
        published: dict[str, str] = {}
        for delivery in found:
            key, event = delivery.key, delivery.event
            original = None if key is None else seen.get(key) or published.get(key)
            if original is not None:
                log.info("redelivery not published", sensor=self.name, event_id=original)
                ids.append(original)
                duplicates.append(original)
                continue
            try:
                await emit(event)
            except BusUnavailableError as error:
                # What went out before the bus stopped taking events stays deduplicated.
                self._ledger.record(published, now)
                log.warning(
                    "event not taken", sensor=self.name, event_id=event.id, error=str(error)
                )
                return HttpReply(
                    503, {"error": str(error)}, {"Retry-After": retry_after(error.delay)}
                )
            ids.append(event.id)
            if key is not None:
                published[key] = event.id
        self._ledger.record(published, now)
        return _accepted(ids, duplicates, batch=batch)

    async def _limit(self, now: datetime) -> HttpReply | None:
        """None when the rate limit lets the delivery through; otherwise the 429 to answer."""
        limit = self.config.rateLimit
        if limit is None:
            return None
        wait = await self._rate_limits.take(
            self.name, limit.perSecond, limit.bucket_size, now.timestamp()
        )
        if wait <= 0:
            return None
        return self._reject(
            429,
            f"more than {limit.perSecond:g} deliveries per second (burst"
            f" {limit.bucket_size}) on /webhooks/{self.path}; send again after the Retry-After"
            " seconds",
            headers={"Retry-After": retry_after(wait)},
        )

    def _authenticate(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> HttpReply | None:
        """None when the delivery may go on; otherwise the 401 or 503 to answer.

        `headers` has lower-case names.
        """
        auth, secrets = self.config.auth, self._secrets
        if auth is None or secrets is None:
            return None

        def failure() -> AuthError | None:
            try:
                verify_delivery(auth, secrets.current, headers, body, now)
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


def _accepted(ids: list[str], duplicates: list[str], *, batch: bool) -> HttpReply:
    """202 with the ids when anything was published; 200 when all were redeliveries."""
    every_one_seen = bool(duplicates) and len(duplicates) == len(ids)
    status = 200 if every_one_seen else 202
    body: dict[str, object] = {"ids": ids} if batch else {"id": ids[0]}
    if every_one_seen:
        body["duplicate"] = True
    elif duplicates:
        body["duplicates"] = duplicates
    return HttpReply(status, body)
