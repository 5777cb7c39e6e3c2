"""Webhook delivery auth settings: validation messages, reading secrets, and the 503 rule."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from eventflow.bus.memory import MemoryBus
from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import HttpReply, HttpRequest
from eventflow.sensing.secrets import (
    INLINE_ALLOWED,
    SecretCache,
    SecretRead,
    SecretSource,
    read_secret,
    read_secrets,
)
from sensors.webhook.auth import HmacScheme
from sensors.webhook.config import AuthConfig, WebhookConfig
from sensors.webhook.sensor import WebhookSensor

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ENV = {"env": "HOOK_SECRET"}
INLINE = (
    "Value error, an inline secret is not accepted: YAML ends up in git; use {env: NAME} for an"
    " environment variable or {file: /path} for a file such as a Secret mount"
)
ONE_PLACE = "Value error, a secret is read from exactly one place; give env: NAME or file: /path"
NEEDS_SECRET = "needs at least one secret; add secrets: [{env: NAME}] or [{file: /path}]"


def auth_of(auth: dict[str, Any]) -> AuthConfig:
    config = WebhookConfig.model_validate({"path": "hooks", "auth": auth})
    assert config.auth is not None
    return config.auth


def problems(auth: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        WebhookConfig.model_validate({"path": "hooks", "auth": auth})
    return [(error["loc"], error["msg"]) for error in caught.value.errors()]


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "loc", "message"),
    [
        ({}, (), "Value error, give exactly one of preset, hmac, bearer, basic; got none"),
        (
            {"preset": "github", "bearer": {}, "secrets": [ENV]},
            (),
            "Value error, give exactly one of preset, hmac, bearer, basic; got preset, bearer",
        ),
        ({"preset": "github"}, (), f"Value error, preset github {NEEDS_SECRET}"),
        ({"bearer": None}, (), f"Value error, bearer {NEEDS_SECRET}"),
        ({"hmac": {"header": "X-Sig"}}, (), f"Value error, hmac {NEEDS_SECRET}"),
        ({"preset": "gitlab", "secrets": ["hunter2"]}, ("secrets", 0), INLINE),
        ({"preset": "gitlab", "secrets": [1234]}, ("secrets", 0), INLINE),
        ({"preset": "gitlab", "secrets": [{"value": "hunter2"}]}, ("secrets", 0), INLINE),
        ({"preset": "gitlab", "secrets": [{}]}, ("secrets", 0), ONE_PLACE),
        (
            {"preset": "gitlab", "secrets": [{"env": "A", "file": "/run/a"}]},
            ("secrets", 0),
            ONE_PLACE,
        ),
        (
            {"preset": "gitlab", "secrets": [{"env": "1A"}]},
            ("secrets", 0, "env"),
            "Value error, '1A' is not an environment variable name; use letters, digits and _,"
            " not starting with a digit, e.g. GITHUB_WEBHOOK_SECRET",
        ),
        (
            {"preset": "gitlab", "secrets": [{"file": ""}]},
            ("secrets", 0, "file"),
            "String should have at least 1 character",
        ),
        (
            {"preset": "gitea", "secrets": [ENV]},
            ("preset",),
            "Input should be 'github', 'gitlab', 'bitbucket', 'stripe' or 'slack'",
        ),
        (
            {"preset": "github", "toleranceSeconds": 10, "secrets": [ENV]},
            (),
            "Value error, toleranceSeconds applies only to the stripe and slack presets, not to"
            " preset github; for a generic scheme set hmac.toleranceSeconds",
        ),
        (
            {"hmac": {"header": "X-Sig"}, "toleranceSeconds": 10, "secrets": [ENV]},
            (),
            "Value error, toleranceSeconds applies only to the stripe and slack presets, not to"
            " hmac; for a generic scheme set hmac.toleranceSeconds",
        ),
        (
            {"preset": "slack", "toleranceSeconds": 0, "secrets": [ENV]},
            ("toleranceSeconds",),
            "Input should be greater than 0",
        ),
        (
            {"preset": "slack", "toleranceSeconds": float("nan"), "secrets": [ENV]},
            ("toleranceSeconds",),
            "Input should be a finite number",
        ),
        (
            {"hmac": {"header": "X-Sig", "timestampHeader": "X-T"}, "secrets": [ENV]},
            ("hmac",),
            "Value error, hmac signature scheme: timestampHeader 'X-T' is set but"
            " signedPayload '{body}' does not sign it; add {timestamp}, e.g."
            " '{timestamp}.{body}'",
        ),
        (
            {
                "hmac": {
                    "header": "X-Sig",
                    "timestampHeader": "X-T",
                    "signedPayload": "{timestamp}.{body}",
                },
                "secrets": [ENV],
            },
            ("hmac",),
            "Value error, hmac signature scheme: toleranceSeconds is None; with a"
            " timestampHeader give a positive number of seconds, e.g. 300",
        ),
        (
            {"hmac": {"header": "X-Sig", "signedPayload": "{ts}.{body}"}, "secrets": [ENV]},
            ("hmac",),
            "Value error, hmac signature scheme: signedPayload '{ts}.{body}' has unknown"
            " placeholder {ts}; use {timestamp} and {body}",
        ),
        (
            {"hmac": {"header": " "}, "secrets": [ENV]},
            ("hmac",),
            "Value error, hmac signature scheme: header is empty; name the header the"
            " signature is in",
        ),
        (
            {"hmac": {"header": "X-Sig", "algorithm": "md5"}, "secrets": [ENV]},
            ("hmac", "algorithm"),
            "Input should be 'sha1', 'sha256' or 'sha512'",
        ),
        (
            {"hmac": {"header": "X-Sig", "encoding": "base32"}, "secrets": [ENV]},
            ("hmac", "encoding"),
            "Input should be 'hex' or 'base64'",
        ),
        (
            {"basic": {"users": []}},
            ("basic", "users"),
            "List should have at least 1 item after validation, not 0",
        ),
        (
            {"basic": {"users": [{"username": "a:b", "password": ENV}]}},
            ("basic", "users", 0, "username"),
            "Value error, username 'a:b' contains ':'; Basic auth splits user:password at the"
            " first colon, so a username cannot hold one",
        ),
        (
            {"basic": {"users": [{"username": "ci", "password": "hunter2"}]}},
            ("basic", "users", 0, "password"),
            INLINE,
        ),
        (
            {"basic": {"users": [{"username": "ci", "password": ENV}]}, "secrets": [ENV]},
            (),
            "Value error, basic takes its passwords from users[].password; remove secrets",
        ),
        (
            {"bearer": {"realm": "x"}, "secrets": [ENV]},
            ("bearer", "realm"),
            "Extra inputs are not permitted",
        ),
        ({"preset": "github", "secret": [ENV]}, ("secret",), "Extra inputs are not permitted"),
    ],
)
def test_invalid_auth_is_a_validation_error_naming_the_field(
    auth: dict[str, Any], loc: tuple[int | str, ...], message: str
) -> None:
    """Each bad auth block gives one error at its field path with an exact message."""
    assert problems(auth) == [(("auth", *loc), message)]


def test_inline_secret_message_does_not_repeat_the_secret() -> None:
    """The inline-secret error never echoes the value, which may be a real credential."""
    [(_, message)] = problems({"preset": "github", "secrets": ["s3cr3t-value"]})
    assert "s3cr3t-value" not in message


def test_inline_value_is_refused_outside_dev_mode_with_the_usual_message() -> None:
    """`{value: ...}` without `serve --dev`: the inline-secret error, value not echoed."""
    [(_, message)] = problems({"preset": "github", "secrets": [{"value": "s3cr3t-value"}]})
    assert message == INLINE


def test_inline_value_is_read_in_dev_mode_and_never_shown() -> None:
    """Under `serve --dev` the value is the secret; repr and logs name it only as inline."""
    token = INLINE_ALLOWED.set(True)
    try:
        auth = auth_of({"preset": "github", "secrets": [{"value": "s3cr3t-value"}]})
        bare = problems({"preset": "github", "secrets": ["s3cr3t-value"]})
        both = problems({"preset": "github", "secrets": [{"value": "v", "env": "HOOK_SECRET"}]})
    finally:
        INLINE_ALLOWED.reset(token)
    [source] = auth.sources
    assert read_secret(source, {}) == b"s3cr3t-value"
    assert source.describe() == "the inline value (serve --dev)"
    assert "s3cr3t-value" not in repr(auth)
    assert [message for _, message in bare] == [INLINE]
    assert [message for _, message in both] == [ONE_PLACE]


def test_hmac_block_builds_the_scheme_it_describes() -> None:
    """Every camelCase hmac field lands in the HmacScheme the sensor verifies with."""
    auth = auth_of(
        {
            "hmac": {
                "header": "X-Signature",
                "algorithm": "sha512",
                "encoding": "base64",
                "prefix": "v1=",
                "timestampHeader": "X-Timestamp",
                "toleranceSeconds": 60,
                "signedPayload": "{timestamp}.{body}",
            },
            "secrets": [ENV],
        }
    )
    assert auth.hmac is not None
    assert auth.hmac.to_scheme() == HmacScheme(
        "X-Signature", "sha512", "base64", "v1=", "X-Timestamp", 60.0, "{timestamp}.{body}"
    )


def test_hmac_block_defaults_to_hex_sha256_over_the_body() -> None:
    """Only the header is required: sha256, hex, no prefix, the body alone is signed."""
    auth = auth_of({"hmac": {"header": "X-Signature"}, "secrets": [ENV]})
    assert auth.hmac is not None
    assert auth.hmac.to_scheme() == HmacScheme("X-Signature", "sha256", "hex")


def test_bare_bearer_key_means_bearer_with_no_options() -> None:
    """`bearer:` with nothing after it (YAML null) selects bearer auth."""
    auth = auth_of({"bearer": None, "secrets": [ENV]})
    assert (auth.bearer is not None, auth.preset, auth.hmac, auth.basic) == (True, None, None, None)


def test_sources_are_the_secrets_or_the_basic_passwords_in_user_order() -> None:
    """Secrets to read come from `secrets`, or for basic from each user's password."""
    rotated = auth_of({"preset": "github", "secrets": [ENV, {"file": "/run/old"}]})
    assert rotated.sources == [SecretSource(env="HOOK_SECRET"), SecretSource(file="/run/old")]
    basic = auth_of(
        {
            "basic": {
                "users": [
                    {"username": "ci", "password": {"env": "CI_PASSWORD"}},
                    {"username": "ops", "password": {"file": "/run/ops"}},
                ]
            }
        }
    )
    assert basic.sources == [SecretSource(env="CI_PASSWORD"), SecretSource(file="/run/ops")]


@pytest.mark.parametrize(
    ("auth", "headers"),
    [
        (None, {"authorization"}),
        ({"bearer": {}, "secrets": [ENV]}, {"authorization"}),
        (
            {"preset": "github", "secrets": [ENV]},
            {"authorization", "x-hub-signature-256", "x-hub-signature"},
        ),
        ({"preset": "gitlab", "secrets": [ENV]}, {"authorization", "x-gitlab-token"}),
        ({"preset": "bitbucket", "secrets": [ENV]}, {"authorization", "x-hub-signature"}),
        ({"preset": "stripe", "secrets": [ENV]}, {"authorization", "stripe-signature"}),
        ({"preset": "slack", "secrets": [ENV]}, {"authorization", "x-slack-signature"}),
        ({"hmac": {"header": "X-My-Sig"}, "secrets": [ENV]}, {"authorization", "x-my-sig"}),
    ],
)
def test_credential_headers_name_every_header_carrying_a_credential(
    auth: dict[str, Any] | None, headers: set[str]
) -> None:
    """Authorization and cookies always, plus the scheme's signature or token header."""
    config = WebhookConfig.model_validate({"path": "hooks", "auth": auth})
    always = {"proxy-authorization", "cookie", "set-cookie"}
    assert config.credential_headers == frozenset(headers | always)


# --- reading secrets ---------------------------------------------------------------------


def test_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An env source reads the process environment by default, value kept as given."""
    monkeypatch.setenv("HOOK_SECRET", "abc\n")
    assert read_secrets([SecretSource(env="HOOK_SECRET")], NOW) == SecretRead((b"abc\n",), (), NOW)


@pytest.mark.parametrize(
    ("environ", "result"),
    [
        ({}, "environment variable HOOK_SECRET is not set"),
        ({"HOOK_SECRET": ""}, "environment variable HOOK_SECRET is empty"),
        ({"HOOK_SECRET": "s\udcffx"}, b"s\xffx"),
    ],
    ids=["unset", "empty", "undecodable-bytes-kept"],
)
def test_env_secret_edge_cases(environ: dict[str, str], result: bytes | str) -> None:
    """Unset and empty variables are reasons, not values; raw environment bytes survive."""
    assert read_secret(SecretSource(env="HOOK_SECRET"), environ) == result


@pytest.mark.parametrize(
    ("content", "result"),
    [
        (b"abc", b"abc"),
        (b"abc\n", b"abc"),
        (b"abc\r\n", b"abc"),
        (b"abc\n\n", b"abc\n"),
        (b" abc \r", b" abc \r"),
        (b"\x00\xff", b"\x00\xff"),
    ],
    ids=["plain", "newline", "crlf", "only-one-newline", "lone-cr-kept", "binary"],
)
def test_file_secret_loses_one_trailing_newline(
    tmp_path: Path, content: bytes, result: bytes
) -> None:
    """A file's single trailing newline (LF or CRLF) is dropped; every other byte is kept."""
    path = tmp_path / "secret"
    path.write_bytes(content)
    assert read_secret(SecretSource(file=str(path)), {}) == result


def test_unreadable_files_are_reasons_naming_the_file(tmp_path: Path) -> None:
    """Missing, empty, newline-only and directory paths give a reason, never raise."""
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "newline").write_bytes(b"\n")
    reasons = [
        read_secret(SecretSource(file=str(tmp_path / name)), {})
        for name in ("missing", "empty", "newline", "")
    ]
    assert reasons == [
        f"file {tmp_path}/missing cannot be read: No such file or directory",
        f"file {tmp_path}/empty is empty",
        f"file {tmp_path}/newline is empty",
        f"file {tmp_path} cannot be read: Is a directory",
    ]


def test_read_keeps_source_order_and_lists_every_missing_one(tmp_path: Path) -> None:
    """values line up with sources (None where missing); available skips the gaps."""
    (tmp_path / "old").write_bytes(b"old\n")
    sources = [
        SecretSource(env="NEW_SECRET"),
        SecretSource(file=str(tmp_path / "old")),
        SecretSource(file=str(tmp_path / "gone")),
    ]
    read = read_secrets(sources, NOW, {})
    assert read == SecretRead(
        (None, b"old", None),
        (
            "environment variable NEW_SECRET is not set",
            f"file {tmp_path}/gone cannot be read: No such file or directory",
        ),
        NOW,
    )
    assert read.available == [b"old"]


def test_cache_reads_again_only_when_the_last_read_is_30s_old(tmp_path: Path) -> None:
    """refresh() is a no-op before 30 s, picks up a rotated file at 30 s, then waits again."""
    path = tmp_path / "secret"
    path.write_bytes(b"one")
    cache = SecretCache([SecretSource(file=str(path))], NOW)
    path.write_bytes(b"two")
    assert cache.refresh(NOW + timedelta(seconds=29.9)) is False
    assert cache.current.values == (b"one",)
    assert cache.refresh(NOW + timedelta(seconds=30)) is True
    assert cache.current == SecretRead((b"two",), (), NOW + timedelta(seconds=30))
    assert cache.refresh(NOW + timedelta(seconds=59)) is False


def test_cache_reads_again_when_the_clock_went_backwards() -> None:
    """A clock stepped back cannot freeze the reading until it catches up."""
    environ = {"HOOK_SECRET": "one"}
    cache = SecretCache([SecretSource(env="HOOK_SECRET")], NOW, environ=environ)
    environ["HOOK_SECRET"] = "two"
    assert cache.refresh(NOW - timedelta(hours=1)) is True
    assert cache.current.values == (b"two",)


# --- the 503 rule ------------------------------------------------------------------------


async def no_emit(event: Event) -> ReceivedEvent:
    """Fails the test: nothing may be emitted when a delivery is not authenticated."""
    raise AssertionError(f"emitted {event.id}")


def github_sensor(secrets: list[dict[str, str]], clock: list[datetime]) -> WebhookSensor:
    config = WebhookConfig.model_validate(
        {"path": "github", "auth": {"preset": "github", "secrets": secrets}}
    )
    return WebhookSensor("gh", config, clock=lambda: clock[0])


def signed(secret: bytes, body: bytes = b'{"zen": "Keep it logically awesome."}') -> HttpRequest:
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "x-hub-signature-256": f"sha256={digest}"}
    return HttpRequest("POST", "github", headers, {}, body)


UNAVAILABLE = HttpReply(
    503,
    {"error": "webhook secret not available; send the delivery again later"},
    {"Retry-After": "30"},
)


async def test_missing_secret_is_503_naming_the_variable_in_the_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unset variable answers 503 with Retry-After, logs its name, and emits nothing."""
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    sensor = github_sensor([ENV], [NOW])
    with capture_logs() as logs:
        reply = await sensor.handle(signed(b"whatever"), no_emit)
    assert reply == UNAVAILABLE
    assert logs == [
        {
            "event": "webhook secret not available",
            "log_level": "error",
            "sensor": "gh",
            "missing": ("environment variable HOOK_SECRET is not set",),
        }
    ]


async def test_failed_check_with_one_secret_missing_is_503_not_401(tmp_path: Path) -> None:
    """A mismatch may be the missing secret's: the sender is told to retry, not refused."""
    (tmp_path / "old").write_bytes(b"old")
    sensor = github_sensor(
        [{"file": str(tmp_path / "new")}, {"file": str(tmp_path / "old")}], [NOW]
    )
    assert await sensor.handle(signed(b"new"), no_emit) == UNAVAILABLE


async def test_secret_mounted_later_is_used_after_30s(tmp_path: Path) -> None:
    """A file that appears is not looked for on every request, but within 30 s of the last."""
    path = tmp_path / "secret"
    clock = [NOW]
    sensor = github_sensor([{"file": str(path)}], clock)
    path.write_bytes(b"mounted\n")
    clock[0] = NOW + timedelta(seconds=10)
    assert await sensor.handle(signed(b"mounted"), no_emit) == UNAVAILABLE
    clock[0] = NOW + timedelta(seconds=30)
    bus = MemoryBus()
    await bus.start()
    try:
        reply = await sensor.handle(signed(b"mounted"), make_emit("gh", bus, lambda: NOW))
    finally:
        await bus.close()
    assert reply.status == 202
