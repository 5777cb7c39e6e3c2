"""Webhook delivery auth: provider signatures made as each provider makes them, and refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.webhook.auth import (
    BASIC,
    BEARER,
    CREDENTIALS_MISMATCH,
    PRESETS,
    SIGNATURE_MISMATCH,
    AuthError,
    HmacScheme,
    verify_basic,
    verify_bearer,
    verify_bitbucket,
    verify_github,
    verify_gitlab,
    verify_hmac,
    verify_slack,
    verify_stripe,
)
from tests.conftest import FIXTURES

NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
T = int(NOW.timestamp())
OLD, NEW, RETIRED = b"old-secret", b"new-secret", b"retired-secret"
GITHUB_PUSH = (FIXTURES / "github" / "push--payload.json").read_bytes()
GITLAB_PUSH = json.dumps(
    {
        "object_kind": "push",
        "event_name": "push",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "ref": "refs/heads/master",
        "user_username": "jsmith",
        "project": {"id": 15, "path_with_namespace": "mike/diaspora"},
        "total_commits_count": 4,
    }
).encode()
STRIPE_EVENT = json.dumps(
    {
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_3NG8", "amount": 2000, "currency": "eur"}},
    },
    indent=2,
).encode()
# Slack's published example of a slash command and its signature.
SLACK_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TIMESTAMP = 1531420618
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
SLACK_NOW = datetime.fromtimestamp(SLACK_TIMESTAMP + 10, UTC)


def hub(secret: bytes, body: bytes) -> str:
    """GitHub and Bitbucket: sha256= and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def stripe(body: bytes, timestamp: int, *secrets: bytes) -> str:
    """Stripe: t=<unix>, then one v1 per secret over "<t>.<body>"."""
    signed = f"{timestamp}.".encode() + body
    v1 = [f"v1={hmac.new(s, signed, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join([f"t={timestamp}", *v1])


def slack(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    """Slack: v0= and the hex HMAC-SHA256 of "v0:<timestamp>:<body>"."""
    signed = f"v0:{timestamp}:".encode() + body
    return {
        "x-slack-request-timestamp": str(timestamp),
        "x-slack-signature": "v0=" + hmac.new(secret, signed, hashlib.sha256).hexdigest(),
    }


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def refusal(check: Callable[[], None]) -> AuthError:
    with pytest.raises(AuthError) as caught:
        check()
    return caught.value


# --- GitHub ------------------------------------------------------------------------------------


def test_github_documented_example_passes() -> None:
    """GitHub's published test vector verifies."""
    headers = {
        "x-hub-signature-256": (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        )
    }
    verify_github(headers, b"Hello, World!", [b"It's a Secret to Everybody"], NOW)


def test_github_push_signed_with_the_secret_passes() -> None:
    """A real push payload signed over its raw bytes verifies."""
    verify_github({"x-hub-signature-256": hub(NEW, GITHUB_PUSH)}, GITHUB_PUSH, [NEW], NOW)


def test_github_upper_case_hex_passes() -> None:
    """The digest is compared as bytes, so the hex letters' case does not matter."""
    headers = {"x-hub-signature-256": "sha256=" + hub(NEW, GITHUB_PUSH)[7:].upper()}
    verify_github(headers, GITHUB_PUSH, [NEW], NOW)


def test_github_reserialized_body_is_refused() -> None:
    """Verification is on the exact bytes: the same JSON re-serialized does not verify."""
    reserialized = json.dumps(json.loads(GITHUB_PUSH)).encode()
    headers = {"x-hub-signature-256": hub(NEW, GITHUB_PUSH)}
    error = refusal(lambda: verify_github(headers, reserialized, [NEW], NOW))
    assert error.detail == "github: header X-Hub-Signature-256 matches no active secret (1 tried)"


def test_github_tampered_body_is_refused_with_a_generic_message() -> None:
    """One changed byte is refused; the sender sees only a generic 401 message."""
    tampered = GITHUB_PUSH.replace(b"Hello-World", b"Hello-Worle", 1)
    headers = {"x-hub-signature-256": hub(NEW, GITHUB_PUSH)}
    error = refusal(lambda: verify_github(headers, tampered, [NEW], NOW))
    assert (error.status, str(error), error.message) == (
        401,
        SIGNATURE_MISMATCH,
        SIGNATURE_MISMATCH,
    )
    assert error.challenge is None
    assert AuthError.status == 401


@pytest.mark.parametrize("secret", [OLD, NEW])
def test_github_old_and_new_secret_both_pass_during_rotation(secret: bytes) -> None:
    """While two secrets are active, a delivery signed with either verifies."""
    verify_github({"x-hub-signature-256": hub(secret, GITHUB_PUSH)}, GITHUB_PUSH, [OLD, NEW], NOW)


def test_github_retired_secret_is_refused() -> None:
    """A secret no longer in the active list does not verify."""
    headers = {"x-hub-signature-256": hub(RETIRED, GITHUB_PUSH)}
    error = refusal(lambda: verify_github(headers, GITHUB_PUSH, [OLD, NEW], NOW))
    assert error.detail == "github: header X-Hub-Signature-256 matches no active secret (2 tried)"


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("sha1=" + "ab" * 32, "github: header X-Hub-Signature-256 does not start with 'sha256='"),
        ("SHA256=" + "ab" * 32, "github: header X-Hub-Signature-256 does not start with 'sha256='"),
        ("ab" * 32, "github: header X-Hub-Signature-256 does not start with 'sha256='"),
        (
            "sha256=zz",
            "github: header X-Hub-Signature-256 is not 'sha256=' followed by a hex digest",
        ),
        (
            "sha256=abc",
            "github: header X-Hub-Signature-256 is not 'sha256=' followed by a hex digest",
        ),
        (
            "sha256=é1",
            "github: header X-Hub-Signature-256 is not 'sha256=' followed by a hex digest",
        ),
        (
            "sha256=ab cd",
            "github: header X-Hub-Signature-256 is not 'sha256=' followed by a hex digest",
        ),
        ("sha256=", "github: header X-Hub-Signature-256 matches no active secret (1 tried)"),
        (
            "sha256=" + "ab" * 32,
            "github: header X-Hub-Signature-256 matches no active secret (1 tried)",
        ),
    ],
)
def test_github_wrong_prefix_or_malformed_signature_is_refused(value: str, detail: str) -> None:
    """A signature with the wrong prefix, bad hex or the wrong digest is refused, said so."""
    error = refusal(lambda: verify_github({"x-hub-signature-256": value}, GITHUB_PUSH, [NEW], NOW))
    assert error.detail == detail


def test_github_legacy_sha1_header_alone_is_refused() -> None:
    """Only the SHA-256 header counts: the SHA-1 one cannot stand in for it."""
    sha1 = "sha1=" + hmac.new(NEW, GITHUB_PUSH, hashlib.sha1).hexdigest()
    error = refusal(lambda: verify_github({"x-hub-signature": sha1}, GITHUB_PUSH, [NEW], NOW))
    assert error.detail == "github: header X-Hub-Signature-256 is missing"


@pytest.mark.parametrize("secrets", [[], [b""]])
def test_endpoint_without_usable_secret_refuses_everything(secrets: list[bytes]) -> None:
    """No secret, or only an empty one, refuses even a delivery signed with the empty key."""
    headers = {"x-hub-signature-256": hub(b"", GITHUB_PUSH)}
    error = refusal(lambda: verify_github(headers, GITHUB_PUSH, secrets, NOW))
    assert error.detail == "github: no secret is configured, so every delivery is refused"


# --- Bitbucket and GitLab ----------------------------------------------------------------------


def test_bitbucket_signed_delivery_passes_and_github_header_does_not_count() -> None:
    """Bitbucket signs in X-Hub-Signature; GitHub's header name is not accepted for it."""
    verify_bitbucket({"x-hub-signature": hub(NEW, GITHUB_PUSH)}, GITHUB_PUSH, [NEW], NOW)
    wrong = {"x-hub-signature-256": hub(NEW, GITHUB_PUSH)}
    error = refusal(lambda: verify_bitbucket(wrong, GITHUB_PUSH, [NEW], NOW))
    assert error.detail == "bitbucket: header X-Hub-Signature is missing"


@pytest.mark.parametrize("token", [OLD, NEW])
def test_gitlab_push_with_either_active_token_passes(token: bytes) -> None:
    """GitLab's X-Gitlab-Token equal to any active secret passes."""
    headers = {"x-gitlab-token": token.decode(), "x-gitlab-event": "Push Hook"}
    verify_gitlab(headers, GITLAB_PUSH, [OLD, NEW], NOW)


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "gitlab: header X-Gitlab-Token is missing"),
        (
            {"x-gitlab-token": "retired-secret"},
            "gitlab: header X-Gitlab-Token matches no active secret (2 tried)",
        ),
        (
            {"x-gitlab-token": "new-secret "},
            "gitlab: header X-Gitlab-Token matches no active secret (2 tried)",
        ),
        (
            {"x-gitlab-token": ""},
            "gitlab: header X-Gitlab-Token matches no active secret (2 tried)",
        ),
        (
            {"x-gitlab-token": "\ud800"},
            "gitlab: header X-Gitlab-Token matches no active secret (2 tried)",
        ),
    ],
)
def test_gitlab_wrong_or_missing_token_is_refused(headers: dict[str, str], detail: str) -> None:
    """A missing, different or padded token is refused as bad credentials."""
    error = refusal(lambda: verify_gitlab(headers, GITLAB_PUSH, [OLD, NEW], NOW))
    assert (str(error), error.detail) == (CREDENTIALS_MISMATCH, detail)


# --- Stripe ------------------------------------------------------------------------------------


def test_stripe_event_signed_now_passes() -> None:
    """A Stripe event signed as Stripe signs it verifies."""
    verify_stripe({"stripe-signature": stripe(STRIPE_EVENT, T, NEW)}, STRIPE_EVENT, [NEW], NOW)


def test_stripe_header_with_a_v1_per_rolled_secret_passes() -> None:
    """During Stripe's secret roll the header has two v1 and one matching is enough."""
    header = stripe(STRIPE_EVENT, T, RETIRED, NEW) + ",v0=" + "00" * 32
    verify_stripe({"stripe-signature": header}, STRIPE_EVENT, [NEW], NOW)


@pytest.mark.parametrize("secret", [OLD, NEW])
def test_stripe_old_and_new_secret_both_pass_during_rotation(secret: bytes) -> None:
    """Our side rotates too: either active secret verifies."""
    header = stripe(STRIPE_EVENT, T, secret)
    verify_stripe({"stripe-signature": header}, STRIPE_EVENT, [OLD, NEW], NOW)


@pytest.mark.parametrize("age", [-300, 0, 300])
def test_stripe_timestamp_at_the_tolerance_edge_passes(age: int) -> None:
    """A timestamp up to the tolerance away, either way, passes."""
    header = stripe(STRIPE_EVENT, T - age, NEW)
    verify_stripe({"stripe-signature": header}, STRIPE_EVENT, [NEW], NOW)


@pytest.mark.parametrize(
    ("age", "detail"),
    [
        (301, "stripe: signed at 1714566299, 301s ago, outside the 300s tolerance"),
        (86400, "stripe: signed at 1714480200, 86400s ago, outside the 300s tolerance"),
        (-301, "stripe: signed at 1714566901, 301s in the future, outside the 300s tolerance"),
    ],
)
def test_stripe_replay_outside_the_window_is_refused(age: int, detail: str) -> None:
    """A correctly signed delivery replayed outside the tolerance is refused."""
    header = stripe(STRIPE_EVENT, T - age, NEW)
    error = refusal(lambda: verify_stripe({"stripe-signature": header}, STRIPE_EVENT, [NEW], NOW))
    assert error.detail == f"{detail} (a replay, or a clock out of sync)"


def test_stripe_custom_tolerance_is_used() -> None:
    """A shorter tolerance refuses what the default would pass."""
    header = {"stripe-signature": stripe(STRIPE_EVENT, T - 60, NEW)}
    error = refusal(lambda: verify_stripe(header, STRIPE_EVENT, [NEW], NOW, tolerance=30))
    assert error.detail == (
        "stripe: signed at 1714566540, 60s ago, outside the 30s tolerance"
        " (a replay, or a clock out of sync)"
    )


def test_stripe_tampered_event_and_rewritten_timestamp_are_refused() -> None:
    """The timestamp is signed: changing it, or the body, breaks the signature."""
    header = stripe(STRIPE_EVENT, T - 1000, NEW)
    fresh = header.replace(f"t={T - 1000}", f"t={T}")
    detail = "stripe: header Stripe-Signature matches no active secret (1 tried)"
    error = refusal(lambda: verify_stripe({"stripe-signature": fresh}, STRIPE_EVENT, [NEW], NOW))
    assert error.detail == detail
    good = {"stripe-signature": stripe(STRIPE_EVENT, T, NEW)}
    error = refusal(lambda: verify_stripe(good, STRIPE_EVENT + b" ", [NEW], NOW))
    assert error.detail == detail


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (None, "stripe: header Stripe-Signature is missing"),
        ("", "stripe: header Stripe-Signature has an item without '='"),
        (f"t={T},v1", "stripe: header Stripe-Signature has an item without '='"),
        (f"t={T},v1=xyz", "stripe: header Stripe-Signature has a v1 that is not hex"),
        ("v1=" + "ab" * 32, "stripe: header Stripe-Signature needs exactly one t=<unix seconds>"),
        (
            f"t={T},t={T},v1=" + "ab" * 32,
            "stripe: header Stripe-Signature needs exactly one t=<unix seconds>",
        ),
        (
            "t=soon,v1=" + "ab" * 32,
            "stripe: header Stripe-Signature needs exactly one t=<unix seconds>",
        ),
        (
            "t=-5,v1=" + "ab" * 32,
            "stripe: header Stripe-Signature needs exactly one t=<unix seconds>",
        ),
        (
            "t=" + "9" * 16 + ",v1=" + "ab" * 32,
            "stripe: header Stripe-Signature needs exactly one t=<unix seconds>",
        ),
        (f"t={T}", "stripe: header Stripe-Signature has no v1 signature"),
        (f"t={T},v0=" + "ab" * 32, "stripe: header Stripe-Signature has no v1 signature"),
        (
            f" t={T},v1=" + "ab" * 32,
            "stripe: header Stripe-Signature needs exactly one t=<unix seconds>",
        ),
    ],
)
def test_stripe_malformed_header_is_refused(value: str | None, detail: str) -> None:
    """Each way the Stripe-Signature header can be malformed is refused, said so."""
    headers = {} if value is None else {"stripe-signature": value}
    error = refusal(lambda: verify_stripe(headers, STRIPE_EVENT, [NEW], NOW))
    assert error.detail == detail


# --- Slack -------------------------------------------------------------------------------------


def test_slack_documented_slash_command_passes() -> None:
    """Slack's published slash-command example verifies with its signing secret."""
    headers = {
        "x-slack-request-timestamp": str(SLACK_TIMESTAMP),
        "x-slack-signature": SLACK_SIGNATURE,
    }
    verify_slack(headers, SLACK_BODY, [SLACK_SECRET], SLACK_NOW)


@pytest.mark.parametrize("secret", [OLD, NEW])
def test_slack_old_and_new_secret_both_pass_during_rotation(secret: bytes) -> None:
    """Either active signing secret verifies a slash command."""
    verify_slack(slack(secret, T, SLACK_BODY), SLACK_BODY, [OLD, NEW], NOW)


def test_slack_captured_request_replayed_later_is_refused() -> None:
    """The documented request, replayed six minutes after it was signed, is refused."""
    headers = {
        "x-slack-request-timestamp": str(SLACK_TIMESTAMP),
        "x-slack-signature": SLACK_SIGNATURE,
    }
    later = datetime.fromtimestamp(SLACK_TIMESTAMP, UTC) + timedelta(minutes=6)
    error = refusal(lambda: verify_slack(headers, SLACK_BODY, [SLACK_SECRET], later))
    assert error.detail == (
        "slack: signed at 1531420618, 360s ago, outside the 300s tolerance"
        " (a replay, or a clock out of sync)"
    )


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (
            {"x-slack-signature": SLACK_SIGNATURE.replace("v0=", "v1=")},
            "slack: header X-Slack-Signature does not start with 'v0='",
        ),
        (
            {"x-slack-request-timestamp": "1531420619"},
            "slack: header X-Slack-Signature matches no active secret (1 tried)",
        ),
        (
            {"x-slack-request-timestamp": "1531420618.0"},
            "slack: header X-Slack-Request-Timestamp is not Unix seconds",
        ),
        (
            {"x-slack-request-timestamp": " 1531420618"},
            "slack: header X-Slack-Request-Timestamp is not Unix seconds",
        ),
        (
            {"x-slack-request-timestamp": "١٥٣١٤٢٠٦١٨"},
            "slack: header X-Slack-Request-Timestamp is not Unix seconds",
        ),
        (
            {"x-slack-request-timestamp": ""},
            "slack: header X-Slack-Request-Timestamp is not Unix seconds",
        ),
    ],
)
def test_slack_wrong_prefix_or_bad_timestamp_is_refused(
    change: dict[str, str], detail: str
) -> None:
    """A wrong version prefix, a changed or non-numeric timestamp is refused."""
    headers = {
        "x-slack-request-timestamp": str(SLACK_TIMESTAMP),
        "x-slack-signature": SLACK_SIGNATURE,
    } | change
    error = refusal(lambda: verify_slack(headers, SLACK_BODY, [SLACK_SECRET], SLACK_NOW))
    assert error.detail == detail


@pytest.mark.parametrize(
    ("missing", "detail"),
    [
        ("x-slack-request-timestamp", "slack: header X-Slack-Request-Timestamp is missing"),
        ("x-slack-signature", "slack: header X-Slack-Signature is missing"),
    ],
)
def test_slack_missing_header_is_refused(missing: str, detail: str) -> None:
    """Both the signature and the timestamp header are required."""
    headers = slack(NEW, T, SLACK_BODY)
    del headers[missing]
    error = refusal(lambda: verify_slack(headers, SLACK_BODY, [NEW], NOW))
    assert error.detail == detail


def test_naive_now_is_a_programming_error() -> None:
    """`now` without a timezone would be read as local time, so it is rejected loudly."""
    with pytest.raises(ValueError, match=r"^now must be timezone-aware, got datetime"):
        verify_slack(slack(NEW, T, SLACK_BODY), SLACK_BODY, [NEW], NOW.replace(tzinfo=None))


# --- generic HMAC ------------------------------------------------------------------------------

SHOPIFY_LIKE = HmacScheme(header="X-Shop-Hmac", algorithm="sha512", encoding="base64")
TIMESTAMPED = HmacScheme(
    header="X-Signature",
    algorithm="sha1",
    encoding="hex",
    prefix="t1:",
    timestamp_header="X-Timestamp",
    tolerance_seconds=60,
    signed_payload="{timestamp}.{body}",
)


def test_generic_base64_sha512_without_prefix_passes() -> None:
    """A base64 SHA-512 signature with no prefix verifies; a tampered body does not."""
    digest = hmac.new(NEW, STRIPE_EVENT, hashlib.sha512).digest()
    headers = {"x-shop-hmac": base64.b64encode(digest).decode()}
    verify_hmac(SHOPIFY_LIKE, headers, STRIPE_EVENT, [NEW], NOW)
    error = refusal(lambda: verify_hmac(SHOPIFY_LIKE, headers, STRIPE_EVENT[1:], [NEW], NOW))
    assert error.detail == "hmac: header X-Shop-Hmac matches no active secret (1 tried)"


def test_generic_base64_with_stray_characters_is_refused() -> None:
    """Base64 is decoded strictly: characters outside the alphabet make it malformed."""
    digest = base64.b64encode(hmac.new(NEW, STRIPE_EVENT, hashlib.sha512).digest()).decode()
    headers = {"x-shop-hmac": digest[:10] + "!" + digest[10:]}
    error = refusal(lambda: verify_hmac(SHOPIFY_LIKE, headers, STRIPE_EVENT, [NEW], NOW))
    assert error.detail == "hmac: header X-Shop-Hmac is not '' followed by a base64 digest"


def test_generic_signed_timestamp_template_passes_and_replay_is_refused() -> None:
    """`{timestamp}.{body}` is signed with the header's exact value and checked for age."""

    def signed(timestamp: int) -> dict[str, str]:
        payload = f"{timestamp}.".encode() + GITLAB_PUSH
        digest = hmac.new(OLD, payload, hashlib.sha1).hexdigest()
        return {"x-timestamp": str(timestamp), "x-signature": "t1:" + digest}

    verify_hmac(TIMESTAMPED, signed(T - 60), GITLAB_PUSH, [OLD, NEW], NOW)
    error = refusal(lambda: verify_hmac(TIMESTAMPED, signed(T - 61), GITLAB_PUSH, [OLD], NOW))
    assert error.detail == (
        "hmac: signed at 1714566539, 61s ago, outside the 60s tolerance"
        " (a replay, or a clock out of sync)"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"header": " "},
            "hmac signature scheme: header is empty; name the header the signature is in",
        ),
        (
            {"algorithm": "md5"},
            "hmac signature scheme: algorithm 'md5' is not supported; use one of sha1, sha256, sha512",
        ),
        (
            {"encoding": "base32"},
            "hmac signature scheme: encoding 'base32' is not supported; use hex or base64",
        ),
        (
            {"signed_payload": "{timestamp}"},
            "hmac signature scheme: signedPayload '{timestamp}' must contain {body} exactly once, e.g. '{timestamp}.{body}'",
        ),
        (
            {"signed_payload": "{body}{body}"},
            "hmac signature scheme: signedPayload '{body}{body}' must contain {body} exactly once, e.g. '{timestamp}.{body}'",
        ),
        (
            {"signed_payload": "{ts}.{body}"},
            "hmac signature scheme: signedPayload '{ts}.{body}' has unknown placeholder {ts}; use {timestamp} and {body}",
        ),
        (
            {"signed_payload": "{timestamp}.{body}"},
            "hmac signature scheme: {timestamp} in signedPayload and toleranceSeconds need a timestampHeader, the header that carries the timestamp",
        ),
        (
            {"tolerance_seconds": 60},
            "hmac signature scheme: {timestamp} in signedPayload and toleranceSeconds need a timestampHeader, the header that carries the timestamp",
        ),
        (
            {"timestamp_header": "X-T", "tolerance_seconds": 60},
            "hmac signature scheme: timestampHeader 'X-T' is set but signedPayload '{body}' does not sign it; add {timestamp}, e.g. '{timestamp}.{body}'",
        ),
        (
            {"timestamp_header": "X-T", "signed_payload": "{timestamp}{body}"},
            "hmac signature scheme: toleranceSeconds is None; with a timestampHeader give a positive number of seconds, e.g. 300",
        ),
        (
            {
                "timestamp_header": "X-T",
                "signed_payload": "{timestamp}{body}",
                "tolerance_seconds": 0,
            },
            "hmac signature scheme: toleranceSeconds is 0; with a timestampHeader give a positive number of seconds, e.g. 300",
        ),
        (
            {
                "timestamp_header": "X-T",
                "signed_payload": "{timestamp}{body}",
                "tolerance_seconds": float("nan"),
            },
            "hmac signature scheme: toleranceSeconds is nan; with a timestampHeader give a positive number of seconds, e.g. 300",
        ),
        (
            {
                "timestamp_header": "X-T",
                "signed_payload": "{timestamp}{body}",
                "tolerance_seconds": float("inf"),
            },
            "hmac signature scheme: toleranceSeconds is inf; with a timestampHeader give a positive number of seconds, e.g. 300",
        ),
    ],
)
def test_inconsistent_scheme_is_rejected_with_the_fix(
    fields: dict[str, object], message: str
) -> None:
    """A scheme that cannot work, or would sign nothing useful, is rejected when built."""
    arguments: dict[str, object] = {"header": "X-Sig", "algorithm": "sha256", "encoding": "hex"}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        HmacScheme(**(arguments | fields))  # type: ignore[arg-type]


# --- bearer and basic --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Bearer new-secret", "bearer old-secret", "BEARER  new-secret"])
def test_bearer_token_equal_to_an_active_secret_passes(value: str) -> None:
    """The scheme name is case-insensitive; the token must equal an active secret."""
    verify_bearer({"authorization": value}, [OLD, NEW])


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "bearer: header Authorization is missing"),
        ({"authorization": "Bearer"}, "bearer: header Authorization is not 'Bearer <credentials>'"),
        (
            {"authorization": "Bearer "},
            "bearer: header Authorization is not 'Bearer <credentials>'",
        ),
        (
            {"authorization": "Token new-secret"},
            "bearer: header Authorization is not 'Bearer <credentials>'",
        ),
        (
            {"authorization": "Bearer NEW-SECRET"},
            "bearer: the token matches no active secret (2 tried)",
        ),
        (
            {"authorization": "Bearer retired-secret"},
            "bearer: the token matches no active secret (2 tried)",
        ),
    ],
)
def test_bearer_missing_or_wrong_token_is_refused_with_a_challenge(
    headers: dict[str, str], detail: str
) -> None:
    """A refused bearer token answers with the Bearer challenge and a generic message."""
    error = refusal(lambda: verify_bearer(headers, [OLD, NEW]))
    assert (str(error), error.detail, error.challenge) == (CREDENTIALS_MISMATCH, detail, BEARER)


def test_bearer_without_secrets_refuses_an_empty_token() -> None:
    """With only an empty secret configured nothing passes."""
    error = refusal(lambda: verify_bearer({"authorization": "Bearer x"}, [b""]))
    assert (error.detail, error.challenge) == (
        "bearer: no secret is configured, so every delivery is refused",
        BEARER,
    )


CREDENTIALS = [("ci", b"old-pass"), ("ci", "nëw-pass".encode())]


@pytest.mark.parametrize("password", ["old-pass", "nëw-pass"])
def test_basic_with_either_active_password_passes(password: str) -> None:
    """Both passwords of a user pass while being rotated; UTF-8 passwords work."""
    verify_basic(basic("ci", password), CREDENTIALS)


def test_basic_password_may_contain_a_colon() -> None:
    """Only the first colon separates user from password (RFC 7617)."""
    verify_basic(basic("ci", "a:b"), [("ci", b"a:b")])


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "basic: header Authorization is missing"),
        (
            {"authorization": "Bearer old-pass"},
            "basic: header Authorization is not 'Basic <credentials>'",
        ),
        (
            {"authorization": "Basic ***"},
            "basic: header Authorization is not Basic base64(user:password)",
        ),
        (
            {"authorization": "Basic " + base64.b64encode(b"ci-old-pass").decode()},
            "basic: header Authorization is not Basic base64(user:password)",
        ),
        (basic("ci", "wrong"), "basic: user and password match no active credentials (2 tried)"),
        (basic("cd", "old-pass"), "basic: user and password match no active credentials (2 tried)"),
        (basic("ci", ""), "basic: user and password match no active credentials (2 tried)"),
    ],
)
def test_basic_missing_malformed_or_wrong_credentials_are_refused(
    headers: dict[str, str], detail: str
) -> None:
    """Each refusal answers with the Basic challenge and a generic message."""
    error = refusal(lambda: verify_basic(headers, CREDENTIALS))
    assert (str(error), error.detail, error.challenge) == (CREDENTIALS_MISMATCH, detail, BASIC)


def test_basic_credentials_with_empty_password_are_not_usable() -> None:
    """A configured empty password would let anyone in, so it is not used."""
    error = refusal(lambda: verify_basic(basic("ci", ""), [("ci", b"")]))
    assert error.detail == "basic: no secret is configured, so every delivery is refused"


# --- presets and fuzzing -----------------------------------------------------------------------


def test_presets_name_each_provider_check() -> None:
    """The preset names a config may use, each bound to its provider's check."""
    assert dict(PRESETS) == {
        "github": verify_github,
        "gitlab": verify_gitlab,
        "bitbucket": verify_bitbucket,
        "stripe": verify_stripe,
        "slack": verify_slack,
    }


Check = Callable[[Mapping[str, str], bytes, Sequence[bytes], datetime], None]
CHECKS: dict[str, Check] = {
    **PRESETS,
    "hmac-base64": lambda h, b, s, n: verify_hmac(SHOPIFY_LIKE, h, b, s, n),
    "hmac-timestamped": lambda h, b, s, n: verify_hmac(TIMESTAMPED, h, b, s, n),
    "bearer": lambda h, b, s, n: verify_bearer(h, s),
    "basic": lambda h, b, s, n: verify_basic(h, [("ci", secret) for secret in s]),
}
HEADER_NAMES = st.sampled_from(
    [
        "x-hub-signature-256",
        "x-hub-signature",
        "x-gitlab-token",
        "stripe-signature",
        "x-slack-signature",
        "x-slack-request-timestamp",
        "x-shop-hmac",
        "x-signature",
        "x-timestamp",
        "authorization",
    ]
)
FRAGMENTS = st.sampled_from(
    [
        "sha256=",
        "v0=",
        "v1=",
        "t=",
        "t1:",
        ",",
        "=",
        ":",
        " ",
        "Bearer ",
        "Basic ",
        "Y2k6",
        str(T),
        "00",
        "ab",
        "zz",
        "==",
        "é",
        "\ud800",
        "\x00",
        "9" * 20,
        "-1",
    ]
)
HEADER_VALUES = st.lists(FRAGMENTS | st.text(max_size=4), max_size=8).map("".join)


@pytest.mark.parametrize("name", sorted(CHECKS))
@settings(max_examples=100, deadline=None)
@given(
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
    body=st.binary(max_size=64),
    secrets=st.lists(st.binary(max_size=8), max_size=3),
    now=st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
)
def test_no_exception_but_auth_error_escapes_on_random_input(
    name: str, headers: dict[str, str], body: bytes, secrets: list[bytes], now: datetime
) -> None:
    """Random headers, bodies, secrets and clocks raise nothing but AuthError."""
    with suppress(AuthError):
        CHECKS[name](headers, body, secrets, now)


@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=256),
    secrets=st.lists(st.binary(min_size=1, max_size=32), min_size=1, max_size=3),
    index=st.integers(min_value=0, max_value=2),
    flip=st.integers(min_value=0),
)
def test_any_body_signed_with_any_active_secret_passes_and_a_flipped_byte_does_not(
    body: bytes, secrets: list[bytes], index: int, flip: int
) -> None:
    """GitHub and Stripe signatures verify for every body and secret; any altered byte fails."""
    secret = secrets[index % len(secrets)]
    github = {"x-hub-signature-256": hub(secret, body)}
    stripe_headers = {"stripe-signature": stripe(body, T, secret)}
    verify_github(github, body, secrets, NOW)
    verify_stripe(stripe_headers, body, secrets, NOW)
    if body:
        position = flip % len(body)
        altered = body[:position] + bytes([body[position] ^ 1]) + body[position + 1 :]
        refusal(lambda: verify_github(github, altered, secrets, NOW))
        refusal(lambda: verify_stripe(stripe_headers, altered, secrets, NOW))


@pytest.mark.parametrize("size", [0, 1, 2046, 2047, 2048, 4094, 4095, 10_000])
@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_bodies_hashed_in_pieces_verify_at_every_size_around_the_piece_length(
    size: int, algorithm: str
) -> None:
    """The HMAC fed in 2047-byte pieces equals one computed whole; a flipped last byte fails."""
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    scheme = HmacScheme("X-Sig", algorithm, "hex")  # type: ignore[arg-type]
    signature = hmac.new(b"key", body, algorithm).hexdigest()
    verify_hmac(scheme, {"x-sig": signature}, body, [b"key"], NOW)
    if body:
        flipped = body[:-1] + bytes([body[-1] ^ 1])
        with pytest.raises(AuthError):
            verify_hmac(scheme, {"x-sig": signature}, flipped, [b"key"], NOW)
