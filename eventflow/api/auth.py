"""Bearer tokens in front of the REST API: who may read /api/v1, who may change things.

When `api.tokens` names any token, every request under /api (the REST API /api/v1 and its
documentation, /api/docs and /api/openapi.json, which map every route) must carry
`Authorization: Bearer <token>`: a missing or unknown token is answered 401 with a
`WWW-Authenticate` challenge, a token without the scope the method needs 403 (GET, HEAD and
OPTIONS need `read`, every other method `write`). Token values are read from the environment
or a file (`SecretSource`), read again at most every 30 s after a refusal so a rotated secret
takes effect, and compared in constant time against every token, so timing tells nothing.
/healthz, /readyz and /webhooks/* are not behind the tokens: deliveries carry their own proof.
With no token configured the API is open; `open_api_warning` says when that is a risk.

This module does not read request bodies or know any route but the /api prefix.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from eventflow.api.webhooks import ASGIApp, Receive, Scope, Send, answer, headers_of
from eventflow.sensing.protocol import HttpReply
from eventflow.sensing.secrets import SecretCache
from eventflow.settings import ApiSettings, ApiToken

log = structlog.get_logger()

PROTECTED_PREFIX = "/api"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = 'Bearer realm="eventflow"'


@dataclass(frozen=True, slots=True)
class KnownToken:
    """A configured token and the value read for it (None while it cannot be read)."""

    name: str
    scopes: frozenset[str]
    value: bytes | None


def required_scope(method: str) -> str:
    return "read" if method.upper() in READ_METHODS else "write"


def is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def _refuse_401(message: str) -> HttpReply:
    return HttpReply(401, {"error": message}, {"WWW-Authenticate": CHALLENGE})


def authorize(
    authorization: str | None, method: str, tokens: Sequence[KnownToken]
) -> tuple[KnownToken | None, HttpReply | None]:
    """The token presented and None when it may do `method`; else the refusal to answer. Pure.

    Every known value is compared, match or not, so the time taken does not depend on which
    token (if any) matched.
    """
    scheme, _, presented = (authorization or "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None, _refuse_401(
            "this API needs a token: send the header Authorization: Bearer <token>"
            " (eventflow CLI: --token or EVENTFLOW_TOKEN)"
        )
    given = presented.encode("utf-8", "surrogateescape")
    matched: KnownToken | None = None
    for token in tokens:
        expected = token.value if token.value is not None else b"\x00" * len(given)
        if hmac.compare_digest(given, expected) and token.value is not None:
            matched = token
    if matched is None:
        return None, _refuse_401("the bearer token is not valid")
    scope = required_scope(method)
    if scope not in matched.scopes:
        return matched, HttpReply(
            403,
            {
                "error": f"token {matched.name!r} lacks the {scope!r} scope that"
                f" {method.upper()} needs; it has: {', '.join(sorted(matched.scopes))}"
            },
            {"WWW-Authenticate": f'{CHALLENGE}, error="insufficient_scope", scope="{scope}"'},
        )
    return matched, None


class TokenKeeper:
    """The configured tokens with their values, read on creation and again after a refusal."""

    def __init__(self, tokens: Sequence[ApiToken], now: datetime) -> None:
        self._tokens = tuple(tokens)
        self._cache = SecretCache([token.secret for token in tokens], now)
        self._warn_missing()

    def known(self) -> list[KnownToken]:
        values = self._cache.current.values
        return [
            KnownToken(token.name, frozenset(token.scopes), value)
            for token, value in zip(self._tokens, values, strict=True)
        ]

    def refresh(self, now: datetime) -> bool:
        """Read the values again if they are old enough; whether it did."""
        if not self._cache.refresh(now):
            return False
        self._warn_missing()
        return True

    def _warn_missing(self) -> None:
        for why in self._cache.current.missing:
            log.warning("api token not available", reason=why)


def with_api_tokens(
    settings: ApiSettings, rest: ASGIApp, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> ASGIApp:
    """`rest` behind the tokens of `settings`; `rest` itself when none is configured."""
    if not settings.tokens:
        return rest
    keeper = TokenKeeper(settings.tokens, clock())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await rest(scope, receive, send)
            return
        header = headers_of(scope).get("authorization")
        method = scope["method"]
        token, refusal = authorize(header, method, keeper.known())
        if refusal is not None and token is None and keeper.refresh(clock()):
            token, refusal = authorize(header, method, keeper.known())
        if refusal is not None:
            log.info(
                "api request refused",
                status=refusal.status,
                method=method,
                path=scope["path"],
                token=token.name if token else None,
            )
            await answer(send, refusal)
            return
        await rest(scope, receive, send)

    return app


def open_api_warning(settings: ApiSettings) -> str | None:
    """Why an API without tokens is exposed, when it binds beyond loopback; else None."""
    if settings.tokens:
        return None
    host = settings.host.strip("[]")
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to anything, so it counts as exposed
    return (
        f"the REST API on {settings.host} has no token: anyone who reaches it can register"
        " webhooks and cancel runs; configure api.tokens (EVENTFLOW_API__TOKENS)"
    )
