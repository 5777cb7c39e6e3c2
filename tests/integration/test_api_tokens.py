"""Bearer tokens in front of /api/v1 on a real server: 401 without a valid token, 403 without
the scope, the route's own answer with it; health and webhook paths stay outside."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventflow.settings import ApiSettings, ApiToken
from tests.conftest import RunningServer

RESOURCES = """\
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: hooks}
spec:
  webhook: {path: hooks}
"""
CHALLENGE = 'Bearer realm="eventflow"'


@pytest.fixture
def tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ApiSettings:
    """A read-only token from the environment, a read-write one from a file."""
    monkeypatch.setenv("READER_TOKEN", "reader-secret")
    admin_file = tmp_path / "admin-token"
    admin_file.write_text("admin-secret\n")
    return ApiSettings(
        tokens=[
            ApiToken(name="reader", scopes=["read"], secret={"env": "READER_TOKEN"}),
            ApiToken(name="admin", scopes=["read", "write"], secret={"file": str(admin_file)}),
        ]
    )


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    path = tmp_path / "resources.yaml"
    path.write_text(RESOURCES)
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def registered(server: RunningServer) -> list[str]:
    return [record.name for record in await server.service.store.webhooks.list_all()]


async def test_missing_or_unknown_token_is_401_with_a_challenge(
    server_factory: Callable[..., Any], resources: Path, tokens: ApiSettings
) -> None:
    """No header, another scheme, a wrong token: 401, WWW-Authenticate, nothing registered."""
    async with server_factory(resources, api=tokens) as server:
        cases = [
            (
                {},
                "this API needs a token: send the header Authorization: Bearer <token>"
                " (eventflow CLI: --token or EVENTFLOW_TOKEN)",
            ),
            (
                {"Authorization": "Basic YWRtaW46YWRtaW4="},
                "this API needs a token: send the header Authorization: Bearer <token>"
                " (eventflow CLI: --token or EVENTFLOW_TOKEN)",
            ),
            (bearer("admin-secret-not"), "the bearer token is not valid"),
        ]
        for headers, message in cases:
            answer = await server.client.post(
                "/api/v1/webhooks", json={"name": "x", "path": "x"}, headers=headers
            )
            assert (answer.status_code, answer.json()) == (401, {"error": message})
            assert answer.headers["www-authenticate"] == CHALLENGE
        assert await registered(server) == []


async def test_read_token_reads_but_cannot_write(
    server_factory: Callable[..., Any], resources: Path, tokens: ApiSettings
) -> None:
    """A read-only token: GET 200, POST 403 naming the missing scope, nothing registered."""
    async with server_factory(resources, api=tokens) as server:
        listed = await server.client.get("/api/v1/webhooks", headers=bearer("reader-secret"))
        assert listed.status_code == 200
        refused = await server.client.post(
            "/api/v1/webhooks", json={"name": "x", "path": "x"}, headers=bearer("reader-secret")
        )
        assert (refused.status_code, refused.json()) == (
            403,
            {"error": "token 'reader' lacks the 'write' scope that POST needs; it has: read"},
        )
        assert refused.headers["www-authenticate"] == (
            f'{CHALLENGE}, error="insufficient_scope", scope="write"'
        )
        assert await registered(server) == []


async def test_write_token_from_a_file_registers(
    server_factory: Callable[..., Any], resources: Path, tokens: ApiSettings
) -> None:
    """The read-write token, read from a file without its newline, may register."""
    async with server_factory(resources, api=tokens) as server:
        answer = await server.client.post(
            "/api/v1/webhooks", json={"name": "x", "path": "x"}, headers=bearer("admin-secret")
        )
        assert answer.status_code == 201
        assert await registered(server) == ["x"]


async def test_health_and_webhook_paths_need_no_token(
    server_factory: Callable[..., Any], resources: Path, tokens: ApiSettings
) -> None:
    """/healthz, /readyz and /webhooks/* answer without the API token."""
    async with server_factory(resources, api=tokens) as server:
        assert (await server.client.get("/healthz")).status_code == 200
        assert (await server.client.get("/readyz")).status_code == 200
        assert (await server.client.post("/webhooks/hooks", json={"a": 1})).status_code == 202
        assert (await server.client.get("/api/v1/runs")).status_code == 401


async def test_without_tokens_the_api_is_open(
    server_factory: Callable[..., Any], resources: Path
) -> None:
    """No token configured: /api/v1 answers without an Authorization header."""
    async with server_factory(resources) as server:
        assert (await server.client.get("/api/v1/webhooks")).status_code == 200


@pytest.mark.parametrize("path", ["/api/docs", "/api/openapi.json"])
async def test_the_api_docs_are_behind_the_read_scope(
    server_factory: Callable[..., Any], resources: Path, tokens: ApiSettings, path: str
) -> None:
    """The docs and the OpenAPI map of every route: 401 without a token, 200 with a read one;
    FastAPI's default /openapi.json outside /api is not served at all."""
    async with server_factory(resources, api=tokens) as server:
        refused = await server.client.get(path)
        assert (refused.status_code, refused.headers["www-authenticate"]) == (401, CHALLENGE)
        assert refused.json() == {
            "error": "this API needs a token: send the header Authorization: Bearer <token>"
            " (eventflow CLI: --token or EVENTFLOW_TOKEN)"
        }
        assert (await server.client.get(path, headers=bearer("wrong"))).status_code == 401
        allowed = await server.client.get(path, headers=bearer("reader-secret"))
        assert allowed.status_code == 200
        assert (await server.client.get("/openapi.json")).status_code == 404


async def test_without_tokens_the_api_docs_are_open(
    server_factory: Callable[..., Any], resources: Path
) -> None:
    """No token configured: the docs answer as the API does, and describe its routes."""
    async with server_factory(resources) as server:
        assert (await server.client.get("/api/docs")).status_code == 200
        schema = (await server.client.get("/api/openapi.json")).json()
        assert "/api/v1/webhooks" in schema["paths"]
        assert not any(path.startswith("/webhooks/") for path in schema["paths"])
