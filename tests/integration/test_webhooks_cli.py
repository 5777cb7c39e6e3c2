"""`eventflow webhooks add|list|get|rm`, `eventflow reload` and `--token` against a real
server: the output a user reads, and the server's reason on a refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner, Result

from eventflow.cli import app
from eventflow.settings import ApiSettings, ApiToken
from tests.integration.test_api_tokens import RESOURCES


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    path = tmp_path / "resources.yaml"
    path.write_text(RESOURCES)
    return path


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> ApiSettings:
    monkeypatch.setenv("ADMIN_TOKEN", "s3cret")
    token = ApiToken(name="admin", scopes=["read", "write"], secret={"env": "ADMIN_TOKEN"})
    return ApiSettings(tokens=[token])


async def run_cli(url: str, *args: str, token: str | None = "s3cret") -> Result:
    """The CLI as a user runs it, on a thread: it calls the server this loop serves. The
    server's logs are captured, so that they stay out of the CLI's output."""
    options = ["--token", token] if token else []
    with capture_logs():
        return await asyncio.to_thread(CliRunner().invoke, app, [*args, *options, "--server", url])


async def test_webhooks_commands_register_list_show_and_remove(
    server_factory: Callable[..., Any], resources: Path, api: ApiSettings, tmp_path: Path
) -> None:
    """add (options and --file), list, get and rm print what happened."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("maxBodyBytes: 4194304\nevent: {type: com.github.push}\n")
    async with server_factory(resources, api=api) as server:
        added = await run_cli(
            server.url,
            "webhooks", "add", "gh", "--path", "github/acme", "--auth-preset", "github",
            "--secret-env", "GH_SECRET", "--file", str(spec),
        )  # fmt: skip
        assert (added.exit_code, added.stdout) == (
            0,
            "registered webhook gh at /webhooks/github/acme\n",
        )
        listed = await run_cli(server.url, "webhooks", "list")
        lines = listed.stdout.splitlines()
        assert lines[0].split() == ["NAME", "PATH", "ORIGIN", "AUTH", "DEFINED"]
        assert lines[1].split()[:4] == ["gh", "/webhooks/github/acme", "api", "github"]
        assert lines[2].split() == ["hooks", "/webhooks/hooks", "yaml", "-", f"{resources}:1"]
        shown = json.loads((await run_cli(server.url, "webhooks", "get", "gh")).stdout)
        assert shown["spec"] == {
            "maxBodyBytes": 4194304,
            "event": {"type": "com.github.push"},
            "path": "github/acme",
            "auth": {"preset": "github", "secrets": [{"env": "GH_SECRET"}]},
        }
        removed = await run_cli(server.url, "webhooks", "rm", "gh")
        assert (removed.exit_code, removed.stdout) == (0, "removed webhook gh\n")
        assert await server.service.store.webhooks.list_all() == []


async def test_webhooks_add_prints_the_servers_reason_on_refusal(
    server_factory: Callable[..., Any], resources: Path, api: ApiSettings
) -> None:
    """A conflict prints the 409 reason; an invalid spec prints each problem, then the 422."""
    async with server_factory(resources, api=api) as server:
        taken = await run_cli(server.url, "webhooks", "add", "x", "--path", "hooks")
        assert taken.exit_code == 1
        assert taken.stderr == (
            "error: 409: path 'hooks' is already served by sensor 'hooks' (defined in"
            f" {resources}:1); pick another path\n"
        )
        invalid = await run_cli(server.url, "webhooks", "add", "y", "--path", "/y")
        assert invalid.exit_code == 1
        assert invalid.stdout == "path: '/y' starts with /; write it without, e.g. 'y'\n"
        assert invalid.stderr == (
            "error: 422: the webhook has 1 problem(s); nothing was registered\n"
        )
        assert await server.service.store.webhooks.list_all() == []


async def test_reload_command_and_a_missing_token(
    server_factory: Callable[..., Any], resources: Path, api: ApiSettings
) -> None:
    """`eventflow reload` prints the changes; without --token the CLI prints the 401 reason."""
    async with server_factory(resources, api=api) as server:
        reloaded = await run_cli(server.url, "reload")
        assert (reloaded.exit_code, reloaded.stdout) == (
            0,
            "reloaded: started -; stopped -; kept hooks\n",
        )
        refused = await run_cli(server.url, "webhooks", "list", token=None)
        assert refused.exit_code == 1
        assert refused.stderr.startswith("error: 401: this API needs a token")


def test_validate_accepts_a_trigger_on_a_registered_sensor(tmp_path: Path) -> None:
    """Offline, a reference to an undeclared sensor is an error, unless it is named with
    --registered."""
    path = tmp_path / "trigger.yaml"
    path.write_text(
        RESOURCES
        + """---
apiVersion: eventflow.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: w}
spec:
  steps: [{name: s, image: i, command: ["true"]}]
---
apiVersion: eventflow.io/v1alpha1
kind: Trigger
metadata: {name: t}
spec:
  events: {e: {sensor: gh}}
  workflow: w
"""
    )
    typo = CliRunner().invoke(app, ["validate", str(path)])
    assert typo.exit_code == 1
    assert typo.stdout == (
        f"{path}:17: Trigger/t: spec.events.e.sensor: no Sensor named 'gh'; defined: hooks\n"
    )
    accepted = CliRunner().invoke(app, ["validate", str(path), "--registered", "gh"])
    assert (accepted.exit_code, accepted.stdout) == (
        0,
        "ok: 1 sensor(s), 1 trigger(s), 1 workflow template(s)\n",
    )
