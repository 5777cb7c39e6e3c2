"""Webhooks registered through the REST API while eventflow runs, on a real server over real
HTTP with a real store (SQLite and PostgreSQL): exact answers, deliveries that start runs, a
restart that keeps them, conflicts that store nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventflow.settings import StoreSettings
from eventflow.store.sql import SqlStore
from tests.conftest import FIXTURES, RunningServer, github_signed

SECRET = "It's a Secret to Everybody"
PUSH = (FIXTURES / "github" / "push--payload.json").read_bytes()

WORKFLOW = """\
apiVersion: eventflow.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: ci}
spec:
  parameters: [{name: commit}]
  steps:
    - {name: build, image: python:3.12-slim, command: [python3, -c, "print('built')"]}
"""
YAML_SENSOR = """\
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: uploads}
spec:
  webhook: {path: uploads}
"""
TRIGGER = """\
apiVersion: eventflow.io/v1alpha1
kind: Trigger
metadata: {name: ci-on-push}
spec:
  events:
    push: {sensor: gh, type: com.github.push}
  workflow: ci
  arguments: {commit: "{{ events.push.data.after }}"}
"""
GITHUB = {
    "name": "gh",
    "path": "github/acme",
    "auth": {"preset": "github", "secrets": [{"env": "GH_HOOK_SECRET"}]},
    "event": {
        "type": "com.github.{{ headers['x-github-event'] }}",
        "id": "{{ headers['x-github-delivery'] }}",
    },
}


def resources(tmp_path: Path, *documents: str) -> Path:
    folder = tmp_path / "resources"
    folder.mkdir(exist_ok=True)
    (folder / "resources.yaml").write_text("---\n".join([WORKFLOW, YAML_SENSOR, *documents]))
    return folder


def github_headers(delivery: str, body: bytes = PUSH) -> dict[str, str]:
    return github_signed(SECRET, delivery, body)


def spec_of(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "name"}


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH_HOOK_SECRET", SECRET)


@pytest.fixture
def start(server_factory: Callable[..., Any], tmp_path: Path, store_url: str) -> Callable[..., Any]:
    """`async with start(*extra_documents)`: a server on a fresh store, SQLite or PostgreSQL."""

    def starting(*documents: str) -> Any:
        return server_factory(resources(tmp_path, *documents), store=StoreSettings(url=store_url))

    return starting


async def registered_names(server: RunningServer) -> list[str]:
    return [record.name for record in await server.service.store.webhooks.list_all()]


@pytest.mark.usefixtures("secret")
async def test_registered_webhook_is_listed_got_replaced_and_removed(start: Any) -> None:
    """CRUD: POST 201, GET lists YAML (read-only) and API webhooks, PUT replaces, DELETE 404s."""
    async with start() as server:
        created = await server.client.post("/api/v1/webhooks", json=GITHUB)
        assert created.status_code == 201
        assert created.headers["location"] == "/api/v1/webhooks/gh"
        body = created.json()
        assert (body["name"], body["origin"], body["readOnly"], body["path"]) == (
            "gh",
            "api",
            False,
            "github/acme",
        )
        assert body["spec"] == spec_of(GITHUB)
        assert body["created_at"] == body["updated_at"]

        listed = (await server.client.get("/api/v1/webhooks")).json()["webhooks"]
        assert [(w["name"], w["origin"], w["readOnly"]) for w in listed] == [
            ("gh", "api", False),
            ("uploads", "yaml", True),
        ]
        assert listed[1]["file"].endswith("resources.yaml:9")
        assert listed[1]["spec"] == {"path": "uploads"}

        replaced = await server.client.put(
            "/api/v1/webhooks/gh", json={**spec_of(GITHUB), "path": "github/other"}
        )
        assert replaced.status_code == 200
        assert replaced.json()["path"] == "github/other"
        assert replaced.json()["created_at"] == body["created_at"]
        got = (await server.client.get("/api/v1/webhooks/gh")).json()
        assert got["spec"]["path"] == "github/other"
        assert server.service.http_sensor("github/acme") is None
        assert server.service.http_sensor("github/other") is not None

        removed = await server.client.delete("/api/v1/webhooks/gh")
        assert (removed.status_code, removed.json()) == (200, {"name": "gh", "deleted": True})
        missing = await server.client.get("/api/v1/webhooks/gh")
        assert (missing.status_code, missing.json()) == (
            404,
            {"error": "no webhook named 'gh'; list them with GET /api/v1/webhooks"},
        )
        delivery = await server.client.post(
            "/webhooks/github/other", content=PUSH, headers=github_headers("d-0")
        )
        assert delivery.status_code == 404
        assert await registered_names(server) == []


@pytest.mark.usefixtures("secret")
async def test_registered_github_webhook_starts_a_run_and_survives_a_restart(
    start: Any, tmp_path: Path
) -> None:
    """A signed push to a registered endpoint starts a run of a trigger on `sensor: gh`,
    before and after a restart; the trigger file is applied by reload, no restart needed."""
    async with start() as server:
        assert (await server.client.post("/api/v1/webhooks", json=GITHUB)).status_code == 201
        resources(tmp_path, TRIGGER)
        reloaded = await server.client.post("/api/v1/reload")
        assert reloaded.json() == {
            "reloaded": True,
            "sensors": {"started": [], "stopped": [], "kept": ["gh", "uploads"]},
        }
        answer = await server.client.post(
            "/webhooks/github/acme", content=PUSH, headers=github_headers("delivery-1")
        )
        assert (answer.status_code, answer.json()) == (202, {"id": "delivery-1"})
        [run] = await server.wait_runs(1)
        assert (run["trigger"], run["event_id"]) == ("ci-on-push", "delivery-1")
        event = await server.service.store.get_event("delivery-1")
        assert event is not None
        assert event.sensor == "gh"

    async with start(TRIGGER) as server:
        assert sorted(server.service.sensors) == ["gh", "uploads"]
        answer = await server.client.post(
            "/webhooks/github/acme", content=PUSH, headers=github_headers("delivery-2")
        )
        assert answer.status_code == 202
        runs = await server.wait_runs(2)
        assert sorted(run["event_id"] for run in runs) == ["delivery-1", "delivery-2"]
        unsigned = await server.client.post(
            "/webhooks/github/acme", content=PUSH, headers={"content-type": "application/json"}
        )
        assert unsigned.status_code == 401


@pytest.mark.usefixtures("secret")
async def test_conflicting_registrations_are_409_and_store_nothing(start: Any) -> None:
    """Duplicate name, a path taken (by YAML or API), and YAML webhooks are refused with a
    reason; the store and the path map are as before."""
    async with start() as server:
        assert (await server.client.post("/api/v1/webhooks", json=GITHUB)).status_code == 201
        cases = [
            (
                "POST",
                "/api/v1/webhooks",
                {**GITHUB, "path": "elsewhere"},
                "a webhook named 'gh' is already registered; change it with"
                " PUT /api/v1/webhooks/gh or pick another name",
            ),
            (
                "POST",
                "/api/v1/webhooks",
                {**GITHUB, "name": "gh2"},
                "path 'github/acme' is already served by sensor 'gh' (defined in the REST API);"
                " pick another path",
            ),
            (
                "POST",
                "/api/v1/webhooks",
                {**GITHUB, "name": "gh3", "path": "uploads"},
                "path 'uploads' is already served by sensor 'uploads' (defined in "
                f"{server.service.live.sensors.entries['uploads'].where}); pick another path",
            ),
        ]
        yaml_file = server.service.live.sensors.entries["uploads"].file
        read_only = f"sensor 'uploads' is defined in {yaml_file}: edit the file and reload"
        cases += [
            ("POST", "/api/v1/webhooks", {"name": "uploads", "path": "x"}, read_only),
            ("PUT", "/api/v1/webhooks/uploads", {"path": "x"}, read_only),
            ("DELETE", "/api/v1/webhooks/uploads", None, read_only),
        ]
        for method, url, body, reason in cases:
            answer = await server.client.request(method, url, json=body)
            assert (answer.status_code, answer.json()) == (409, {"error": reason}), (method, body)
        assert await registered_names(server) == ["gh"]
        assert sorted(server.service.sensors) == ["gh", "uploads"]
        assert server.service.http_sensor("x") is None
        assert server.service.http_sensor("elsewhere") is None


@pytest.mark.usefixtures("secret")
async def test_invalid_registration_is_422_with_every_problem_and_stores_nothing(
    start: Any,
) -> None:
    """Bad name, bad path, an inline secret: 422 listing each as `field: message`."""
    async with start() as server:
        answer = await server.client.post(
            "/api/v1/webhooks",
            json={
                "name": "Bad_Name",
                "path": "/github",
                "auth": {"preset": "github", "secrets": ["hunter2"]},
            },
        )
        assert answer.status_code == 422
        body = answer.json()
        assert body["error"] == "the webhook has 3 problem(s); nothing was registered"
        assert body["problems"] == [
            "name: expected lowercase letters, digits and '-', starting and ending with a"
            " letter or digit, got 'Bad_Name'",
            "path: '/github' starts with /; write it without, e.g. 'github'",
            "auth.secrets[0]: an inline secret is not accepted: YAML ends up in git; use"
            " {env: NAME} for an environment variable or {file: /path} for a file such as a"
            " Secret mount",
        ]
        assert "hunter2" not in answer.text
        assert await registered_names(server) == []
        assert sorted(server.service.sensors) == ["uploads"]


@pytest.mark.usefixtures("secret")
async def test_removing_a_webhook_a_trigger_listens_to_is_409(start: Any, tmp_path: Path) -> None:
    """A trigger still listening to a registered webhook keeps it from being removed."""
    async with start() as server:
        assert (await server.client.post("/api/v1/webhooks", json=GITHUB)).status_code == 201
        resources(tmp_path, TRIGGER)
        assert (await server.client.post("/api/v1/reload")).status_code == 200
        answer = await server.client.delete("/api/v1/webhooks/gh")
        where = server.service.catalog.resources.triggers["ci-on-push"].where
        assert (answer.status_code, answer.json()) == (
            409,
            {
                "error": f"webhook 'gh' is still listened to by trigger(s) ci-on-push ({where});"
                " remove it from those triggers and reload first"
            },
        )
        assert await registered_names(server) == ["gh"]
        assert server.service.http_sensor("github/acme") is not None


async def test_put_and_delete_of_an_unknown_webhook_are_404(start: Any) -> None:
    """PUT does not create and DELETE of nothing says so, each naming what to do."""
    async with start() as server:
        put = await server.client.put("/api/v1/webhooks/nope", json={"path": "nope"})
        assert (put.status_code, put.json()) == (
            404,
            {"error": "no webhook named 'nope'; register it with POST /api/v1/webhooks"},
        )
        deleted = await server.client.delete("/api/v1/webhooks/nope")
        assert deleted.status_code == 404
        renamed = await server.client.put("/api/v1/webhooks/nope", json={"name": "other"})
        assert renamed.status_code == 422
        assert json.loads(renamed.text)["problems"] == [
            "name: 'other' differs from 'nope' in the URL; a webhook is not renamed: register"
            " the new name and remove the old one"
        ]
        assert await registered_names(server) == []


async def test_two_replicas_registering_one_name_at_once_store_it_once(store_url: str) -> None:
    """Two stores on one database create the same webhook at once: one wins, the other gets a
    conflict, and one row remains."""
    first, second = await SqlStore.open(store_url), await SqlStore.open(store_url)
    try:
        outcomes = await asyncio.gather(
            *(
                store.webhooks.create("gh", "github", {"path": "github"}, datetime.now(UTC))
                for store in (first, second)
            ),
            return_exceptions=True,
        )
        assert sorted(type(outcome).__name__ for outcome in outcomes) == [
            "RegisteredWebhook",
            "WebhookConflictError",
        ]
        assert [record.name for record in await first.webhooks.list_all()] == ["gh"]
    finally:
        await first.close()
        await second.close()
