"""Fixtures shared by the suites: an eventflow server in this process on a loopback port."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from eventflow.api.app import create_app
from eventflow.service import Service
from eventflow.settings import ApiSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "quickstart"
FIXTURES = ROOT / "tests" / "fixtures"


def github_signed(secret: str, delivery: str, body: bytes) -> dict[str, str]:
    """The headers GitHub sends with a push: its event, delivery id and HMAC signature."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": delivery,
        "x-hub-signature-256": f"sha256={digest}",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of examples/quickstart that a test may edit."""
    target = tmp_path / "resources"
    shutil.copytree(EXAMPLES, target)
    return target


class RunningServer:
    """An eventflow service behind real uvicorn on 127.0.0.1, in the test's event loop."""

    def __init__(self, service: Service, server: uvicorn.Server, url: str) -> None:
        self.service = service
        self.server = server
        self.url = url
        self.client = httpx.AsyncClient(base_url=url, timeout=10.0)

    async def wait_run(self, run_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """Poll the REST API until the run is finished; return it."""
        async with asyncio.timeout(timeout):
            while True:
                run: dict[str, Any] = (await self.client.get(f"/api/v1/runs/{run_id}")).json()
                if run.get("state") in {"Succeeded", "Failed", "Cancelled"}:
                    return run
                await asyncio.sleep(0.02)

    async def wait_runs(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until `count` runs exist; return them (newest first)."""
        async with asyncio.timeout(timeout):
            while True:
                runs: list[dict[str, Any]] = (await self.client.get("/api/v1/runs")).json()["runs"]
                if len(runs) >= count:
                    return runs
                await asyncio.sleep(0.02)

    async def stored_events(self) -> list[str]:
        return [event.id for event in await self.service.store.list_events(limit=1000)]


@asynccontextmanager
async def serve(resources: Path, data_dir: Path, **settings: Any) -> AsyncIterator[RunningServer]:
    """Start eventflow on `resources` with its store in `data_dir`; stop it on exit."""
    port = free_port()
    api = settings.pop("api", ApiSettings()).model_copy(update={"port": port})
    service = Service(Settings(data_dir=data_dir, api=api, **settings), [resources])
    config = uvicorn.Config(
        create_app(service), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(), name="uvicorn")
    async with asyncio.timeout(15):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    running = RunningServer(service, server, f"http://127.0.0.1:{port}")
    try:
        yield running
    finally:
        await running.client.aclose()
        server.should_exit = True
        await task


@pytest.fixture
def server_factory(
    tmp_path: Path,
) -> Callable[..., Any]:
    """`async with server_factory(resources) as server:` a fresh server per call."""

    def factory(resources: Path = EXAMPLES, **settings: Any) -> Any:
        return serve(resources, settings.pop("data_dir", tmp_path / "data"), **settings)

    return factory
