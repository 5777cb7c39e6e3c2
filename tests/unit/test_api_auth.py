"""The REST API's token check (pure): which token, which scope, which refusal."""

from __future__ import annotations

import pytest

from eventflow.api.auth import KnownToken, authorize, is_protected, open_api_warning
from eventflow.settings import ApiSettings, ApiToken

READER = KnownToken("reader", frozenset({"read"}), b"r-secret")
WRITER = KnownToken("writer", frozenset({"read", "write"}), b"w-secret")
UNREADABLE = KnownToken("later", frozenset({"read", "write"}), None)
TOKENS = [UNREADABLE, READER, WRITER]


@pytest.mark.parametrize(
    ("header", "method", "token"),
    [
        ("Bearer r-secret", "GET", READER),
        ("bearer r-secret", "HEAD", READER),
        ("Bearer w-secret", "GET", WRITER),
        ("Bearer w-secret", "DELETE", WRITER),
        ("Bearer   w-secret  ", "POST", WRITER),
    ],
)
def test_a_known_token_with_the_scope_passes(header: str, method: str, token: KnownToken) -> None:
    """The token presented is found, and the method's scope is among its scopes."""
    assert authorize(header, method, TOKENS) == (token, None)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "this API needs a token"),
        ("", "this API needs a token"),
        ("Bearer", "this API needs a token"),
        ("Basic dXNlcjpwdw==", "this API needs a token"),
        ("Bearer r-secre", "the bearer token is not valid"),
        ("Bearer r-secret2", "the bearer token is not valid"),
        ("Bearer \x00\x00\x00\x00\x00\x00\x00\x00", "the bearer token is not valid"),
    ],
)
def test_a_missing_or_unknown_token_is_401(header: str | None, message: str) -> None:
    """No token, another scheme, a near miss, or the filler of an unreadable one: 401."""
    token, refusal = authorize(header, "GET", TOKENS)
    assert token is None
    assert refusal is not None
    assert refusal.status == 401
    assert str(refusal.body["error"]).startswith(message)
    assert refusal.headers == {"WWW-Authenticate": 'Bearer realm="eventflow"'}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_read_token_is_403_on_writes(method: str) -> None:
    """Every method but GET, HEAD and OPTIONS needs the write scope."""
    token, refusal = authorize("Bearer r-secret", method, TOKENS)
    assert token == READER
    assert refusal is not None
    assert (refusal.status, refusal.body) == (
        403,
        {"error": f"token 'reader' lacks the 'write' scope that {method} needs; it has: read"},
    )


@pytest.mark.parametrize(
    ("path", "protected"),
    [
        ("/api/v1", True),
        ("/api/v1/webhooks", True),
        ("/api/docs", True),
        ("/api/openapi.json", True),
        ("/api", True),
        ("/apis", False),
        ("/openapi.json", False),
        ("/healthz", False),
        ("/webhooks/api/v1", False),
    ],
)
def test_only_the_api_and_its_docs_are_protected(path: str, protected: bool) -> None:
    """The /api prefix is matched by whole segments; webhooks and health stay outside."""
    assert is_protected(path) is protected


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
        ("eventflow.example.com", True),
    ],
)
def test_an_open_api_beyond_loopback_is_warned_about(host: str, warned: bool) -> None:
    """Without tokens, binding beyond loopback gets a warning; with one, never."""
    assert (open_api_warning(ApiSettings(host=host)) is not None) is warned
    token = ApiToken(name="t", scopes=["read"], secret={"env": "T"})
    assert open_api_warning(ApiSettings(host=host, tokens=[token])) is None


def test_token_names_must_be_unique() -> None:
    """Two tokens of one name are a settings error naming it."""
    token = {"name": "ci", "scopes": ["read"], "secret": {"env": "T"}}
    with pytest.raises(ValueError, match="token names repeat: ci; give each a new name"):
        ApiSettings.model_validate({"tokens": [token, token]})


def test_an_inline_token_secret_is_refused() -> None:
    """A token value written into settings is refused, as webhook secrets are."""
    with pytest.raises(ValueError, match="an inline secret is not accepted"):
        ApiSettings.model_validate(
            {"tokens": [{"name": "ci", "scopes": ["read"], "secret": "hunter2"}]}
        )
