"""Check that a webhook delivery comes from who it claims: the pure core of delivery auth.

Provider presets (GitHub, GitLab, Bitbucket Cloud and Server, Stripe, Slack), a generic HMAC
scheme (header, algorithm, encoding, prefix, optional signed timestamp with a tolerance, and a
signed-payload template), bearer tokens and basic auth. Every check compares in constant time
against every active secret, so a secret can be rotated by keeping old and new active for a
while; signatures are verified on the exact raw body bytes, before anything parses them.

Any failure raises `AuthError` (HTTP 401): its message is the same generic phrase for every
cause, so a sender learns nothing from it; its `detail` says what failed for the server log and
never contains a secret or an expected signature. Nothing else escapes for any headers or body.
This module does no I/O and reads no clock: secrets arrive as bytes and `now` is an argument.
It does not load secrets, log, or deduplicate redeliveries.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Literal

Algorithm = Literal["sha1", "sha256", "sha512"]
Encoding = Literal["hex", "base64"]
Verifier = Callable[[Mapping[str, str], bytes, Sequence[bytes], datetime], None]

SIGNATURE_MISMATCH = "signature does not match"
CREDENTIALS_MISMATCH = "credentials do not match"
# WWW-Authenticate values for the 401 answers to bearer and basic auth.
BEARER = 'Bearer realm="eventflow"'
BASIC = 'Basic realm="eventflow", charset="UTF-8"'
DEFAULT_TOLERANCE_SECONDS = 300.0

_ALGORITHMS = ("sha1", "sha256", "sha512")
_ENCODINGS = ("hex", "base64")
_PLACEHOLDERS = ("{timestamp}", "{body}")
_UNCONFIGURED = "{preset}: no secret is configured, so every delivery is refused"
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
# hashlib keeps the GIL for updates below 2048 bytes (HASHLIB_GIL_MINSIZE).
_UNDER_GIL_RELEASE = 2047
# Unix seconds as ASCII digits; the length cap keeps int() cheap on hostile input.
_UNIX_SECONDS = re.compile(r"[0-9]{1,15}")


class AuthError(Exception):
    """A delivery that failed authentication: answer `status` with `message`, log `detail`."""

    status = 401

    def __init__(
        self, detail: str, *, message: str = SIGNATURE_MISMATCH, challenge: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        # The WWW-Authenticate value a 401 must carry for bearer and basic auth (RFC 7235).
        self.challenge = challenge


@dataclass(frozen=True, slots=True)
class HmacScheme:
    """How a sender signs: HMAC(secret, signed_payload) in `header`, as prefix + encoded digest.

    `signed_payload` is a template with `{body}` (the raw body, exactly once) and, when
    `timestamp_header` is set, `{timestamp}` (that header's value, Unix seconds). A timestamp
    outside `tolerance_seconds` of `now` either way is refused as a replay. `preset` names the
    scheme in log details.
    """

    header: str
    algorithm: Algorithm
    encoding: Encoding
    prefix: str = ""
    timestamp_header: str | None = None
    tolerance_seconds: float | None = None
    signed_payload: str = "{body}"
    preset: str = "hmac"

    def __post_init__(self) -> None:
        where = f"{self.preset} signature scheme"
        if not self.header.strip():
            raise ValueError(f"{where}: header is empty; name the header the signature is in")
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(
                f"{where}: algorithm {self.algorithm!r} is not supported; use one of"
                f" {', '.join(_ALGORITHMS)}"
            )
        if self.encoding not in _ENCODINGS:
            raise ValueError(
                f"{where}: encoding {self.encoding!r} is not supported; use hex or base64"
            )
        self._check_template(where)
        self._check_timestamp(where)

    def _check_template(self, where: str) -> None:
        template = self.signed_payload
        unknown = [name for name in _PLACEHOLDER.findall(template) if name not in _PLACEHOLDERS]
        if unknown:
            raise ValueError(
                f"{where}: signedPayload {template!r} has unknown placeholder {unknown[0]};"
                " use {timestamp} and {body}"
            )
        if template.count("{body}") != 1:
            raise ValueError(
                f"{where}: signedPayload {template!r} must contain {{body}} exactly once,"
                " e.g. '{timestamp}.{body}'"
            )

    def _check_timestamp(self, where: str) -> None:
        signs_timestamp = "{timestamp}" in self.signed_payload
        tolerance = self.tolerance_seconds
        if self.timestamp_header is None:
            if signs_timestamp or tolerance is not None:
                raise ValueError(
                    f"{where}: {{timestamp}} in signedPayload and toleranceSeconds need a"
                    " timestampHeader, the header that carries the timestamp"
                )
            return
        # A timestamp the signature does not cover can be rewritten by anyone replaying.
        if not signs_timestamp:
            raise ValueError(
                f"{where}: timestampHeader {self.timestamp_header!r} is set but signedPayload"
                f" {self.signed_payload!r} does not sign it; add {{timestamp}},"
                " e.g. '{timestamp}.{body}'"
            )
        if tolerance is None or not math.isfinite(tolerance) or tolerance <= 0:
            raise ValueError(
                f"{where}: toleranceSeconds is {tolerance!r}; with a timestampHeader give a"
                f" positive number of seconds, e.g. {DEFAULT_TOLERANCE_SECONDS:g}"
            )


GITHUB = HmacScheme("X-Hub-Signature-256", "sha256", "hex", "sha256=", preset="github")
# Bitbucket Cloud and Bitbucket Server / Data Center sign the same way.
BITBUCKET = HmacScheme("X-Hub-Signature", "sha256", "hex", "sha256=", preset="bitbucket")


def verify_hmac(
    scheme: HmacScheme,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    now: datetime,
) -> None:
    """Return when `headers` carry a valid `scheme` signature of `body`; raise AuthError if not.

    `headers` has lower-case names; `now` is timezone-aware.
    """
    keys = _usable(secrets, scheme.preset)
    timestamp = ""
    if scheme.timestamp_header is not None:
        timestamp = _unix_seconds(headers, scheme.timestamp_header, scheme.preset)
    text = _header(headers, scheme.header, scheme.preset)
    if not text.startswith(scheme.prefix):
        raise AuthError(
            f"{scheme.preset}: header {scheme.header} does not start with {scheme.prefix!r}"
        )
    signature = _decode(text.removeprefix(scheme.prefix), scheme.encoding)
    if signature is None:
        raise AuthError(
            f"{scheme.preset}: header {scheme.header} is not {scheme.prefix!r} followed by"
            f" a {scheme.encoding} digest"
        )
    before, _, after = scheme.signed_payload.partition("{body}")
    payload = _fill(before, timestamp) + body + _fill(after, timestamp)
    _require_match(
        keys, payload, scheme.algorithm, [signature], preset=scheme.preset, header=scheme.header
    )
    if scheme.tolerance_seconds is not None:
        _require_fresh(int(timestamp), now, scheme.tolerance_seconds, scheme.preset)


def verify_github(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes], now: datetime
) -> None:
    """GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`."""
    verify_hmac(GITHUB, headers, body, secrets, now)


def verify_bitbucket(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes], now: datetime
) -> None:
    """Bitbucket Cloud and Server: `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>`."""
    verify_hmac(BITBUCKET, headers, body, secrets, now)


def verify_slack(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    now: datetime,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:<body>">`."""
    scheme = HmacScheme(
        header="X-Slack-Signature",
        algorithm="sha256",
        encoding="hex",
        prefix="v0=",
        timestamp_header="X-Slack-Request-Timestamp",
        tolerance_seconds=tolerance,
        signed_payload="v0:{timestamp}:{body}",
        preset="slack",
    )
    verify_hmac(scheme, headers, body, secrets, now)


def verify_stripe(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    now: datetime,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Stripe: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">[,v1=...]`.

    Stripe sends one v1 per active endpoint secret while a secret is being rolled; any match
    passes. Other schemes (v0) are ignored. Unlike Stripe's own library, a timestamp too far in
    the future is refused too.
    """
    keys = _usable(secrets, "stripe")
    timestamps: list[str] = []
    signatures: list[bytes] = []
    for item in _header(headers, "Stripe-Signature", "stripe").split(","):
        name, equals, value = item.partition("=")
        if not equals:
            raise AuthError("stripe: header Stripe-Signature has an item without '='")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signature = _decode(value, "hex")
            if signature is None:
                raise AuthError("stripe: header Stripe-Signature has a v1 that is not hex")
            signatures.append(signature)
    if len(timestamps) != 1 or not _UNIX_SECONDS.fullmatch(timestamps[0]):
        raise AuthError("stripe: header Stripe-Signature needs exactly one t=<unix seconds>")
    if not signatures:
        raise AuthError("stripe: header Stripe-Signature has no v1 signature")
    payload = timestamps[0].encode() + b"." + body
    _require_match(keys, payload, "sha256", signatures, preset="stripe", header="Stripe-Signature")
    _require_fresh(int(timestamps[0]), now, tolerance, "stripe")


def verify_gitlab(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes], now: datetime
) -> None:
    """GitLab: `X-Gitlab-Token` equals a secret; GitLab signs nothing, so `body` is not used."""
    keys = _usable(secrets, "gitlab", CREDENTIALS_MISMATCH)
    token = headers.get("x-gitlab-token")
    if token is None:
        raise _refused("gitlab: header X-Gitlab-Token is missing")
    if not _equals_any(_utf8(token), keys):
        raise _refused(
            f"gitlab: header X-Gitlab-Token matches no active secret ({len(keys)} tried)"
        )


def verify_bearer(headers: Mapping[str, str], secrets: Sequence[bytes]) -> None:
    """`Authorization: Bearer <token>` where the token equals a secret."""
    keys = _usable(secrets, "bearer", CREDENTIALS_MISMATCH, BEARER)
    credentials = _authorization(headers, "Bearer", BEARER)
    if not _equals_any(_utf8(credentials), keys):
        raise _refused(f"bearer: the token matches no active secret ({len(keys)} tried)", BEARER)


def verify_basic(headers: Mapping[str, str], credentials: Sequence[tuple[str, bytes]]) -> None:
    """`Authorization: Basic base64(user:password)` matching one (user, password) pair."""
    pairs = [(_utf8(user), password) for user, password in credentials if password]
    if not pairs:
        raise _refused(_UNCONFIGURED.format(preset="basic"), BASIC)
    decoded = _decode(_authorization(headers, "Basic", BASIC), "base64")
    user, colon, password = (decoded or b"").partition(b":")
    if not colon:
        raise _refused("basic: header Authorization is not Basic base64(user:password)", BASIC)
    matched = False
    for known_user, known_password in pairs:
        # `&`, not `and`: the password is compared even when the user differs.
        matched |= hmac.compare_digest(user, known_user) & hmac.compare_digest(
            password, known_password
        )
    if not matched:
        raise _refused(
            f"basic: user and password match no active credentials ({len(pairs)} tried)", BASIC
        )


PRESETS: Mapping[str, Verifier] = MappingProxyType(
    {
        "github": verify_github,
        "gitlab": verify_gitlab,
        "bitbucket": verify_bitbucket,
        "stripe": verify_stripe,
        "slack": verify_slack,
    }
)


def _refused(detail: str, challenge: str | None = None) -> AuthError:
    return AuthError(detail, message=CREDENTIALS_MISMATCH, challenge=challenge)


def _usable(
    secrets: Sequence[bytes],
    preset: str,
    message: str = SIGNATURE_MISMATCH,
    challenge: str | None = None,
) -> list[bytes]:
    # An empty secret would accept an empty token or an HMAC anyone can compute.
    keys = [secret for secret in secrets if secret]
    if not keys:
        raise AuthError(_UNCONFIGURED.format(preset=preset), message=message, challenge=challenge)
    return keys


def _header(headers: Mapping[str, str], name: str, preset: str) -> str:
    value = headers.get(name.lower())
    if value is None:
        raise AuthError(f"{preset}: header {name} is missing")
    return value


def _authorization(headers: Mapping[str, str], scheme: str, challenge: str) -> str:
    preset = scheme.lower()
    value = headers.get("authorization")
    if value is None:
        raise _refused(f"{preset}: header Authorization is missing", challenge)
    given, _, credentials = value.partition(" ")
    credentials = credentials.strip(" ")
    # The scheme name is case-insensitive (RFC 7235); the credentials are not.
    if given.lower() != preset or not credentials:
        raise _refused(f"{preset}: header Authorization is not '{scheme} <credentials>'", challenge)
    return credentials


def _unix_seconds(headers: Mapping[str, str], name: str, preset: str) -> str:
    value = _header(headers, name, preset)
    if not _UNIX_SECONDS.fullmatch(value):
        raise AuthError(f"{preset}: header {name} is not Unix seconds")
    return value


def _utf8(text: str) -> bytes:
    # surrogatepass: any str encodes, so hostile header text cannot raise here.
    return text.encode("utf-8", "surrogatepass")


def _fill(text: str, timestamp: str) -> bytes:
    return _utf8(text.replace("{timestamp}", timestamp))


def _decode(text: str, encoding: Encoding) -> bytes | None:
    try:
        if encoding == "hex":
            return binascii.unhexlify(text)
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error is a ValueError, and so is non-ASCII text
        return None


def _digest(key: bytes, payload: bytes, algorithm: Algorithm) -> bytes:
    """HMAC of `payload`, fed in pieces too small for hashlib to release the GIL on.

    Hashing 2 KiB or more at once releases the GIL; the event loop then waits to take it
    back from whatever thread holds it (the store's, up to the 5 ms switch interval), which
    cost webhook intake more than the hashing itself.
    """
    mac = hmac.new(key, digestmod=algorithm)
    view = memoryview(payload)
    for start in range(0, len(view), _UNDER_GIL_RELEASE):
        mac.update(view[start : start + _UNDER_GIL_RELEASE])
    return mac.digest()


def _equals_any(given: bytes, keys: Sequence[bytes]) -> bool:
    matched = False
    # No early exit: the time taken does not tell which secret, if any, matched.
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


def _require_match(
    keys: Sequence[bytes],
    payload: bytes,
    algorithm: Algorithm,
    signatures: Sequence[bytes],
    *,
    preset: str,
    header: str,
) -> None:
    matched = False
    for key in keys:
        expected = _digest(key, payload, algorithm)
        for signature in signatures:
            matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise AuthError(f"{preset}: header {header} matches no active secret ({len(keys)} tried)")


def _require_fresh(timestamp: int, now: datetime, tolerance: float, preset: str) -> None:
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    age = now.timestamp() - timestamp
    # `not <=` so that a NaN tolerance refuses rather than accepts.
    if not abs(age) <= tolerance:
        when = f"{age:.0f}s ago" if age > 0 else f"{-age:.0f}s in the future"
        raise AuthError(
            f"{preset}: signed at {timestamp}, {when}, outside the {tolerance:g}s tolerance"
            " (a replay, or a clock out of sync)"
        )
