"""The push mode: notifications POSTed to /webhooks/<path> by MinIO's webhook target or an SNS
HTTP(S) subscription, answered 202 once every record is on the bus (promise 1).

An SNS SubscriptionConfirmation is confirmed by GETting its SubscribeURL, but only when that
URL is https (or http with `snsAllowHttp`) on a host `push.snsHosts` allows: the caller chooses
the URL, so an open confirmer would let anyone make eventflow send requests. SNS message
signatures are not verified here; authenticate deliveries with `push.auth` (SNS supports basic
auth in the endpoint URL, MinIO a bearer `auth_token`). Bad bodies get 400 with the decoder's
message and nothing is published. This module does not decode or deduplicate.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from urllib.parse import urlsplit

import aiohttp
import structlog

from eventflow.errors import BusUnavailableError
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest
from eventflow.sensing.secrets import SecretCache
from sensors.objectstore.config import ObjectStoreConfig, PushConfig
from sensors.objectstore.normalizing import DecodeError
from sensors.objectstore.reporting import Reporter
from sensors.webhook.auth import AuthError
from sensors.webhook.sensor import verify_delivery

log = structlog.get_logger()

CONFIRM_TIMEOUT_SECONDS = 10.0
PURGE_SECONDS = 600.0


def host_allowed(url: str, patterns: list[str], *, allow_http: bool) -> str | None:
    """None if eventflow may GET `url`; otherwise why not."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        return f"SubscribeURL {url!r}: scheme {parts.scheme!r} is not {' or '.join(schemes)}"
    try:
        port = parts.port
    except ValueError:
        return f"SubscribeURL {url!r}: the port is not a number"
    host = (parts.hostname or "").lower()
    for pattern in patterns:
        name, _, wanted_port = pattern.lower().partition(":")
        label = re.escape(name).replace(r"\*", "[a-z0-9-]+")
        # A pattern without a port allows the scheme's default port only.
        port_fits = str(port) == wanted_port if wanted_port else port is None
        if re.fullmatch(label, host) and port_fits:
            return None
    shown = parts.netloc.rpartition("@")[2]
    return f"SubscribeURL {url!r}: host {shown!r} is not in push.snsHosts ({', '.join(patterns)})"


class ObjectStorePushSensor:
    """`spec.objectstore` with mode push: one endpoint under /webhooks/."""

    def __init__(self, reporter: Reporter[ObjectStoreConfig], config: PushConfig) -> None:
        self.name = reporter.name
        self.reporter = reporter
        self.config = config
        auth = config.auth
        self._secrets = None if auth is None else SecretCache(auth.sources, reporter.clock())

    @property
    def path(self) -> str:
        return self.config.path

    @property
    def max_body_bytes(self) -> int:
        return self.config.maxBodyBytes

    async def run(self, emit: Emit) -> None:
        """Requests come through `handle`; meanwhile drop expired dedupe entries now and then."""
        while True:
            await asyncio.sleep(PURGE_SECONDS)
            await self.reporter.state.purge_expired(self.reporter.clock())

    async def handle(self, request: HttpRequest, emit: Emit) -> HttpReply:
        if request.method.upper() != "POST":
            return self._reject(405, f"method {request.method} is not allowed; use POST")
        if len(request.body) > self.max_body_bytes:
            return self._reject(413, f"body is larger than {self.max_body_bytes} bytes")
        refusal = self._authenticate(request)
        if refusal is not None:
            return refusal
        kind = request.headers.get("x-amz-sns-message-type")
        if kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
            return await self._confirm(request.body, kind)
        try:
            ids = await self.reporter.report_message(request.body, emit)
        except DecodeError as error:
            return self._reject(400, str(error))
        except BusUnavailableError as error:
            log.warning("notification not taken", sensor=self.name, error=str(error))
            retry = str(max(1, math.ceil(error.delay)))
            return HttpReply(503, {"error": str(error)}, {"Retry-After": retry})
        return HttpReply(202, {"ids": ids})

    def _authenticate(self, request: HttpRequest) -> HttpReply | None:
        auth, secrets = self.config.auth, self._secrets
        if auth is None or secrets is None:
            return None
        now = self.reporter.clock()
        headers = {name.lower(): value for name, value in request.headers.items()}
        for attempt in range(2):
            try:
                verify_delivery(auth, secrets.current, headers, request.body, now)
            except AuthError as error:
                if attempt == 0 and secrets.refresh(now):
                    continue
                if secrets.current.missing:
                    return HttpReply(503, {"error": "push secret not available; retry later"})
                challenge = {} if error.challenge is None else {"WWW-Authenticate": error.challenge}
                return self._reject(401, error.message, challenge)
            return None
        return None

    async def _confirm(self, body: bytes, kind: str) -> HttpReply:
        try:
            document = json.loads(body)
        except ValueError:
            return self._reject(400, f"{kind}: the body is not JSON")
        url = document.get("SubscribeURL") if isinstance(document, dict) else None
        if kind == "UnsubscribeConfirmation":
            log.info("sns unsubscribed", sensor=self.name, topic=document.get("TopicArn"))
            return HttpReply(200, {"status": "unsubscribed"})
        if not isinstance(url, str):
            return self._reject(400, f"{kind}: SubscribeURL missing; expected the URL to confirm")
        refusal = host_allowed(url, self.config.snsHosts, allow_http=self.config.snsAllowHttp)
        if refusal is not None:
            return self._reject(403, refusal)
        try:
            timeout = aiohttp.ClientTimeout(total=CONFIRM_TIMEOUT_SECONDS)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, allow_redirects=False) as reply,
            ):
                status = reply.status
        except (aiohttp.ClientError, TimeoutError) as error:
            return self._reject(502, f"SubscribeURL could not be reached: {error!r}")
        if status != 200:
            return self._reject(502, f"SubscribeURL answered {status}; the subscription waits")
        log.info("sns subscription confirmed", sensor=self.name, topic=document.get("TopicArn"))
        return HttpReply(200, {"status": "confirmed"})

    def _reject(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> HttpReply:
        if status == 400:
            self.reporter.counts.rejected += 1
        log.info("notification rejected", sensor=self.name, status=status, error=message)
        return HttpReply(status, {"error": message}, headers or {})
