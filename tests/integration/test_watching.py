"""The resource file watcher (`watch_resources`, `serve --watch`): a changed file is applied
once it settles, a broken one is refused and logged as SIGHUP logs it, in-flight requests
finish on the sensor they reached."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from eventflow.reloading import SensorChanges
from eventflow.watching import snapshot, watch
from tests.integration.test_reloading import request_in_flight, sensor, wait_event, write

INTERVAL = 0.05


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write(tmp_path / "resources", sensor("a", "a"))


async def answered(server: Any, path: str, status: int) -> None:
    """Wait until POST /webhooks/<path> is answered `status`."""
    async with asyncio.timeout(5):
        while (await server.client.post(f"/webhooks/{path}", json={})).status_code != status:
            await asyncio.sleep(INTERVAL)


async def test_an_edited_file_is_applied_without_a_reload_call(
    server_factory: Callable[..., Any], folder: Path
) -> None:
    """A new sensor in the file: its endpoint answers 202, the unchanged one is kept."""
    async with server_factory(
        folder, watch_resources=True, watch_interval_seconds=INTERVAL
    ) as server:
        kept = server.service.sensors["a"]
        assert (await server.client.post("/webhooks/new", json={})).status_code == 404
        write(folder, sensor("a", "a"), sensor("new", "new"))
        await answered(server, "new", 202)
        assert server.service.sensors["a"] is kept


async def test_a_broken_file_keeps_the_running_config_and_logs_why(
    server_factory: Callable[..., Any], folder: Path
) -> None:
    """A typo: the old endpoint still answers, the new path is not served, and the refusal
    is logged with its file:line problem, as SIGHUP logs it; a fix is applied after."""
    async with server_factory(
        folder, watch_resources=True, watch_interval_seconds=INTERVAL
    ) as server:
        before = (server.service.catalog, dict(server.service.sensors))
        with capture_logs() as logs:
            write(folder, sensor("a", "/a2"))
            async with asyncio.timeout(5):
                while not any(log["event"] == "reload refused; nothing changed" for log in logs):
                    await asyncio.sleep(INTERVAL)
        [refusal] = [log for log in logs if log["event"] == "reload refused; nothing changed"]
        assert refusal == {
            "event": "reload refused; nothing changed",
            "log_level": "error",
            "cause": "file watcher",
            "problems": [
                f"{folder / 'resources.yaml'}:12: Sensor/a: spec.webhook.path: '/a2' starts with"
                " /; write it without, e.g. 'a2'"
            ],
        }
        assert (server.service.catalog, dict(server.service.sensors)) == before
        assert (await server.client.post("/webhooks/a", json={})).status_code == 202
        write(folder, sensor("a", "a2"))
        await answered(server, "a2", 202)
        assert (await server.client.post("/webhooks/a", json={})).status_code == 404


async def test_in_flight_request_finishes_across_a_watched_change(
    server_factory: Callable[..., Any], folder: Path
) -> None:
    """A request whose body is still arriving when the watcher replaces its sensor is
    answered 202 by the sensor it reached, with that sensor's event type."""
    async with server_factory(
        folder, watch_resources=True, watch_interval_seconds=INTERVAL
    ) as server:
        in_flight, release = await request_in_flight(server)
        old = server.service.sensors["a"]
        write(folder, sensor("a", "a", "com.example.new"))
        async with asyncio.timeout(5):
            while server.service.sensors["a"] is old:
                await asyncio.sleep(INTERVAL)
        release.set()
        answer = await in_flight
        assert answer.status_code == 202
        assert (await wait_event(server, answer.json()["id"])).type == "com.example.old"
        after = await server.client.post("/webhooks/a", json={})
        assert (await wait_event(server, after.json()["id"])).type == "com.example.new"


async def test_writes_in_quick_succession_give_one_reload(tmp_path: Path) -> None:
    """Three writes well within an interval are applied once, after they settle; no change,
    no reload."""
    file = write(tmp_path / "resources", sensor("a", "a")) / "resources.yaml"
    reloads: list[str] = []

    async def reload() -> SensorChanges:
        reloads.append(file.read_text())
        return SensorChanges((), (), ())

    watcher = asyncio.create_task(watch([file.parent], reload, 0.3))
    try:
        await asyncio.sleep(0.5)
        assert reloads == []
        for n in range(3):
            write(file.parent, sensor("a", f"a{n}"))
            await asyncio.sleep(0.05)
        async with asyncio.timeout(5):
            while not reloads:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.9)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert reloads == [file.read_text()]
    assert "path: a2" in reloads[0]


async def test_a_failed_reload_is_tried_again(tmp_path: Path) -> None:
    """A reload that fails for another reason than the files (a store outage) is retried at
    the next look, without a further change."""
    folder = write(tmp_path / "resources", sensor("a", "a"))
    calls: list[int] = []

    async def reload() -> SensorChanges:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("database is locked")
        return SensorChanges((), (), ())

    watcher = asyncio.create_task(watch([folder], reload, INTERVAL))
    try:
        await asyncio.sleep(INTERVAL * 3)
        with capture_logs() as logs:
            write(folder, sensor("a", "b"))
            async with asyncio.timeout(5):
                while len(calls) < 2:
                    await asyncio.sleep(INTERVAL)
            await asyncio.sleep(INTERVAL * 4)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert len(calls) == 2
    assert {
        "event": "reload failed, will retry",
        "log_level": "warning",
        "cause": "file watcher",
        "error": "database is locked",
    } in logs


def test_snapshot_sees_what_loading_reads(tmp_path: Path) -> None:
    """YAML files under a directory, hidden ones and other suffixes aside; a missing path
    and a replaced file (same size, new inode) are told apart."""
    folder = tmp_path / "resources"
    (folder / "nested").mkdir(parents=True)
    (folder / "nested" / "b.yml").write_text("b")
    (folder / "a.yaml").write_text("a")
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.yaml").write_text("x")
    (folder / ".git").mkdir()
    (folder / ".git" / "c.yaml").write_text("x")
    missing = tmp_path / "gone.yaml"
    first = snapshot([folder, missing])
    assert {entry[0] for entry in first} == {
        str(folder / "a.yaml"),
        str(folder / "nested" / "b.yml"),
        str(missing),
    }
    assert (str(missing), -1, -1, -1) in first
    (folder / "notes.txt").write_text("changed")
    assert snapshot([folder, missing]) == first
    replacement = folder / "a.new"
    replacement.write_text("b")
    stat = (folder / "a.yaml").stat()
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(folder / "a.yaml")
    assert snapshot([folder, missing]) != first
