"""Reloading the resource files of a running server (POST /api/v1/reload, SIGHUP): all or
nothing, unchanged sensors untouched, in-flight webhook requests finished on the sensor they
started with."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from eventflow.reloading import SensorChanges, reload_on_sighup
from eventflow.settings import ApiSettings, ApiToken

WORKFLOW = """\
apiVersion: eventflow.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: noop}
spec:
  steps:
    - {name: only, image: python:3.12-slim, command: [python3, -c, "print('ok')"]}
"""


def sensor(name: str, path: str, event_type: str = "com.example.old") -> str:
    return f"""\
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {{name: {name}}}
spec:
  webhook: {{path: {path}, event: {{type: {event_type}}}}}
"""


def write(folder: Path, *documents: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "resources.yaml").write_text("---\n".join([WORKFLOW, *documents]))
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write(tmp_path / "resources", sensor("a", "a"), sensor("b", "b"))


async def test_reload_with_a_broken_file_is_422_and_changes_nothing(
    server_factory: Callable[..., Any], folder: Path
) -> None:
    """A typo anywhere: 422 with file:line problems; catalog, sensors and paths unchanged."""
    async with server_factory(folder) as server:
        service = server.service
        before = (service.catalog, dict(service.sensors), service.http_sensor("a"))
        write(folder, sensor("a", "a2"), sensor("b", "/b"))
        answer = await server.client.post("/api/v1/reload")
        assert answer.status_code == 422
        assert answer.json() == {
            "error": "1 problem(s) in the resources; nothing changed",
            "problems": [
                f"{folder / 'resources.yaml'}:18: Sensor/b: spec.webhook.path: '/b' starts with"
                " /; write it without, e.g. 'b'"
            ],
        }
        assert (service.catalog, dict(service.sensors), service.http_sensor("a")) == before
        assert service.http_sensor("a2") is None
        delivery = await server.client.post("/webhooks/a", json={"n": 1})
        assert delivery.status_code == 202


async def test_reload_restarts_only_changed_sensors_and_swaps_paths(
    server_factory: Callable[..., Any], folder: Path
) -> None:
    """A changed sensor is replaced, an unchanged one is the same object, a new path serves."""
    async with server_factory(folder) as server:
        service = server.service
        kept = service.sensors["b"]
        write(folder, sensor("a", "a-new"), sensor("b", "b"), sensor("c", "c"))
        answer = await server.client.post("/api/v1/reload")
        assert answer.json() == {
            "reloaded": True,
            "sensors": {"started": ["a", "c"], "stopped": ["a"], "kept": ["b"]},
        }
        assert service.sensors["b"] is kept
        assert (await server.client.post("/webhooks/a", json={})).status_code == 404
        for path in ("a-new", "b", "c"):
            assert (await server.client.post(f"/webhooks/{path}", json={})).status_code == 202


async def test_reload_keeps_paths_unique_and_names_apart_from_registered_ones(
    server_factory: Callable[..., Any], folder: Path
) -> None:
    """Two sensors on one path, or a YAML sensor named like a registered webhook: 422."""
    async with server_factory(folder) as server:
        registered = await server.client.post("/api/v1/webhooks", json={"name": "r", "path": "r"})
        assert registered.status_code == 201
        write(folder, sensor("a", "b"), sensor("b", "b"), sensor("r", "r2"))
        answer = await server.client.post("/api/v1/reload")
        file = folder / "resources.yaml"
        assert answer.json()["problems"] == [
            f"{file}:22: Sensor/r: metadata.name: a webhook named 'r' is registered through the"
            " REST API; rename this sensor, or remove the webhook (eventflow webhooks rm r)",
        ]
        write(folder, sensor("a", "b"), sensor("b", "b"))
        answer = await server.client.post("/api/v1/reload")
        assert answer.json()["problems"] == [
            f"{file}:18: Sensor/b: spec.webhook.path: path 'b' is already served by sensor 'a'"
            f" (defined in {file}:8); give each sensor its own path",
        ]
        assert sorted(server.service.sensors) == ["a", "b", "r"]
        assert server.service.http_sensor("a") is server.service.sensors["a"]


async def slow_body(first: bytes, release: asyncio.Event, rest: bytes) -> AsyncIterator[bytes]:
    yield first
    await release.wait()
    yield rest


async def request_in_flight(server: Any) -> tuple[asyncio.Task[Any], asyncio.Event]:
    """A POST to /webhooks/a that has reached the server and whose body ends only once the
    returned event is set."""
    release = asyncio.Event()
    in_flight = asyncio.create_task(
        server.client.post(
            "/webhooks/a",
            content=slow_body(b'{"n":', release, b" 1}"),
            headers={"content-type": "application/json"},
        )
    )
    async with asyncio.timeout(5):
        while not server.server.server_state.tasks:
            await asyncio.sleep(0.01)
    return in_flight, release


@pytest.mark.parametrize("change", ["changed", "removed"])
async def test_in_flight_request_finishes_on_its_sensor_across_a_reload(
    server_factory: Callable[..., Any], folder: Path, change: str
) -> None:
    """A request whose body is still arriving when its sensor is changed or removed is
    answered 202 by the sensor it reached, with that sensor's event type."""
    async with server_factory(folder) as server:
        in_flight, release = await request_in_flight(server)
        await asyncio.sleep(0.05)
        documents = [sensor("b", "b")]
        if change == "changed":
            documents.append(sensor("a", "a", "com.example.new"))
        write(folder, *documents)
        assert (await server.client.post("/api/v1/reload")).status_code == 200
        release.set()
        answer = await in_flight
        assert answer.status_code == 202
        stored = await wait_event(server, answer.json()["id"])
        assert stored.type == "com.example.old"
        after = await server.client.post("/webhooks/a", json={"n": 2})
        assert after.status_code == (202 if change == "changed" else 404)


async def wait_event(server: Any, event_id: str) -> Any:
    async with asyncio.timeout(5):
        while (event := await server.service.store.get_event(event_id)) is None:
            await asyncio.sleep(0.02)
    return event


async def test_sighup_runs_the_reload_and_logs_a_refusal() -> None:
    """Each SIGHUP calls reload once; after the handler is removed, none does."""
    calls: list[int] = []
    done = asyncio.Event()

    async def reload() -> SensorChanges:
        calls.append(1)
        done.set()
        return SensorChanges((), (), ())

    stop = reload_on_sighup(reload)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        stop()
    assert calls == [1]


async def test_reload_is_behind_the_write_scope(
    server_factory: Callable[..., Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /api/v1/reload with a read-only token is 403 and reloads nothing."""
    monkeypatch.setenv("READER_TOKEN", "r-token")
    api = ApiSettings(
        tokens=[ApiToken(name="reader", scopes=["read"], secret={"env": "READER_TOKEN"})]
    )
    async with server_factory(folder, api=api) as server:
        write(folder, sensor("z", "z"))
        answer = await server.client.post(
            "/api/v1/reload", headers={"Authorization": "Bearer r-token"}
        )
        assert answer.status_code == 403
        assert sorted(server.service.sensors) == ["a", "b"]
