"""The embedded pipeline end to end in one process: webhook -> bus -> trigger -> DAG run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

from nats.js.errors import NotFoundError

from eventflow.settings import BusSettings
from tests.conftest import EXAMPLES
from tests.contract.conftest import NATS_URL, nats_connection

UPLOAD = {"key": "incoming/orders.csv", "size": 2048, "etag": "abc"}

SLOW_STEP_RESOURCES = """
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: hook}
spec:
  webhook: {path: hook}
---
apiVersion: eventflow.io/v1alpha1
kind: Trigger
metadata: {name: on-hook}
spec:
  events:
    hook: {sensor: hook}
  workflow: flow
  arguments: {seconds: "{{ string(events.hook.data.seconds) }}"}
  policy: {concurrency: {limit: 1}}
---
apiVersion: eventflow.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: flow}
spec:
  parameters: [{name: seconds}]
  steps:
    - name: work
      command: [python3, -c, "import sys, time; print('working', flush=True); time.sleep(float(sys.argv[1])); print('done')", "{{ params.seconds }}"]
%s
"""


def write(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "resources"
    directory.mkdir(exist_ok=True)
    (directory / "resources.yaml").write_text(textwrap.dedent(text))
    return directory


def step(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["name"] == name)


async def wait_step_state(server: Any, run_id: str, name: str, state: str) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            run = (await server.client.get(f"/api/v1/runs/{run_id}")).json()
            if step(run, name)["state"] == state:
                return run  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)


async def wait_log(server: Any, run_id: str, name: str, text: str) -> None:
    """Wait until the step's current attempt has logged `text` (its process is under way)."""
    async with asyncio.timeout(15):
        while (await server.client.get(f"/api/v1/runs/{run_id}/steps/{name}/logs")).text != text:
            await asyncio.sleep(0.02)


async def test_webhook_event_runs_the_dag_with_outputs_passed_between_steps(server_factory):
    """A matching upload runs extract -> transform -> load, each reading the last one's outputs."""
    async with server_factory(EXAMPLES) as server:
        response = await server.client.post("/webhooks/uploads", json=UPLOAD)
        assert response.status_code == 202
        event_id = response.json()["id"]
        [created] = await server.wait_runs(1)
        run = await server.wait_run(created["id"])
        assert run["state"] == "Succeeded", run
        assert run["trigger"] == "etl-on-upload"
        assert run["event_id"] == event_id
        assert run["arguments"] == {"key": "incoming/orders.csv", "mode": "full"}
        assert [(s["name"], s["state"], s["exit_code"]) for s in run["steps"]] == [
            ("extract", "Succeeded", 0),
            ("transform", "Succeeded", 0),
            ("load", "Succeeded", 0),
        ]
        assert step(run, "extract")["outputs"] == {"rows": 3, "key": "incoming/orders.csv"}
        assert step(run, "transform")["outputs"] == {"rows": 6}
        logs = await server.client.get(f"/api/v1/runs/{run['id']}/steps/load/logs")
        assert logs.text == "loaded 6 rows\n"
        transform_log = await server.client.get(f"/api/v1/runs/{run['id']}/steps/transform/logs")
        assert transform_log.text == "transforming 3 rows in full mode\n"


async def test_event_that_fails_the_filter_starts_nothing_and_says_why(server_factory):
    """An empty upload is recorded with the trigger's reason for not matching, and no run."""
    async with server_factory(EXAMPLES) as server:
        response = await server.client.post("/webhooks/uploads", json={**UPLOAD, "size": 0})
        event_id = response.json()["id"]
        async with asyncio.timeout(10):
            while (await server.client.get(f"/api/v1/events/{event_id}")).status_code == 404:
                await asyncio.sleep(0.02)
        event = (await server.client.get(f"/api/v1/events/{event_id}")).json()
        assert [(d["trigger"], d["matched"], d["reason"]) for d in event["decisions"]] == [
            (
                "etl-on-upload",
                False,
                "filter 'data.size > 0 && data.key.endsWith(\".csv\")' is false",
            )
        ]
        assert (await server.client.get("/api/v1/runs")).json()["runs"] == []


async def test_repeated_notification_starts_one_run(server_factory):
    """The dedupe policy (key + etag) turns three deliveries of one upload into one run."""
    async with server_factory(EXAMPLES) as server:
        ids = []
        for _ in range(3):
            response = await server.client.post("/webhooks/uploads", json=UPLOAD)
            ids.append(response.json()["id"])
        async with asyncio.timeout(10):
            while len(await server.stored_events()) < 3:
                await asyncio.sleep(0.02)
        runs = (await server.client.get("/api/v1/runs")).json()["runs"]
        assert len(runs) == 1
        assert len(set(ids)) == 3
        later = (await server.client.get(f"/api/v1/events/{ids[2]}")).json()
        assert later["decisions"] == [
            {"trigger": "etl-on-upload", "matched": True, "reason": None, "run_id": runs[0]["id"]}
        ]


async def test_bad_requests_are_answered_and_leave_nothing_behind(server_factory):
    """Invalid JSON, wrong type, oversized body, unknown path: 4xx with a reason, nothing kept."""
    async with server_factory(EXAMPLES) as server:
        client = server.client
        cases = [
            (
                await client.post(
                    "/webhooks/uploads",
                    content=b'{"key": ',
                    headers={"content-type": "application/json"},
                ),
                400,
            ),
            (
                await client.post(
                    "/webhooks/uploads", content=b"key=x", headers={"content-type": "text/plain"}
                ),
                415,
            ),
            (
                await client.post(
                    "/webhooks/uploads",
                    content=b"{" + b" " * 1_048_576 + b"}",
                    headers={"content-type": "application/json"},
                ),
                413,
            ),
            (await client.post("/webhooks/nowhere", json=UPLOAD), 404),
        ]
        statuses = [(response.status_code, response.json()) for response, _ in cases]
        assert statuses[0][0] == 400
        assert statuses[0][1]["error"].startswith("body is not valid JSON")
        assert statuses[1][0] == 415
        assert "application/json" in statuses[1][1]["error"]
        assert statuses[2] == (413, {"error": "body is larger than the limit of 1048576 bytes"})
        assert statuses[3] == (404, {"error": "no webhook sensor at /webhooks/nowhere"})
        # A good event after the bad ones: once it is stored, nothing else was.
        good = (await client.post("/webhooks/uploads", json=UPLOAD)).json()["id"]
        async with asyncio.timeout(10):
            while not await server.stored_events():
                await asyncio.sleep(0.02)
        assert await server.stored_events() == [good]


async def test_missing_command_fails_the_step_and_the_server_goes_on(server_factory, tmp_path):
    """A step whose command does not exist fails the run with that reason; the next run works."""
    resources = write(
        tmp_path,
        (SLOW_STEP_RESOURCES % "").replace(
            "command: [python3, -c,", "command: [no-such-command-here, -c,"
        ),
    )
    async with server_factory(resources) as server:
        await server.client.post("/webhooks/hook", json={"seconds": 0})
        [created] = await server.wait_runs(1)
        run = await server.wait_run(created["id"])
        assert run["state"] == "Failed"
        assert step(run, "work")["state"] == "Failed"
        assert step(run, "work")["reason"] == "command not found: 'no-such-command-here'"
        assert run["reason"] == "step 'work' failed: command not found: 'no-such-command-here'"
        assert (await server.client.get("/readyz")).status_code == 200


async def test_cancel_stops_the_running_step(server_factory, tmp_path):
    """Cancelling a run kills its running step and ends the run Cancelled."""
    resources = write(tmp_path, SLOW_STEP_RESOURCES % "")
    async with server_factory(resources) as server:
        await server.client.post("/webhooks/hook", json={"seconds": 30})
        [created] = await server.wait_runs(1)
        await wait_step_state(server, created["id"], "work", "Running")
        response = await server.client.post(f"/api/v1/runs/{created['id']}/cancel")
        assert response.status_code == 202
        run = await server.wait_run(created["id"])
        assert run["state"] == "Cancelled"
        assert run["reason"] == "cancelled by request"
        assert step(run, "work")["state"] == "Cancelled"


async def test_step_timeout_ends_the_step_timed_out(server_factory, tmp_path):
    """A step past its timeout is killed and marked TimedOut, failing the run."""
    resources = write(tmp_path, SLOW_STEP_RESOURCES % "      timeout: 300ms")
    async with server_factory(resources) as server:
        await server.client.post("/webhooks/hook", json={"seconds": 30})
        [created] = await server.wait_runs(1)
        run = await server.wait_run(created["id"])
        assert step(run, "work")["state"] == "TimedOut"
        assert run["state"] == "Failed"


async def test_concurrency_limit_queues_the_second_run(server_factory, tmp_path):
    """With concurrency limit 1, the second run starts only after the first finished."""
    resources = write(tmp_path, SLOW_STEP_RESOURCES % "")
    async with server_factory(resources) as server:
        await server.client.post("/webhooks/hook", json={"seconds": 0.3})
        await server.client.post("/webhooks/hook", json={"seconds": 0})
        runs = await server.wait_runs(2)
        first, second = sorted(runs, key=lambda r: r["created_at"])
        first = await server.wait_run(first["id"])
        second = await server.wait_run(second["id"])
        assert first["state"] == second["state"] == "Succeeded"
        assert second["started_at"] >= first["finished_at"]


async def test_restart_mid_run_resumes_the_run(server_factory, tmp_path):
    """A step interrupted by a shutdown is retried after the restart and the run completes."""
    resources = write(
        tmp_path,
        (SLOW_STEP_RESOURCES % "      retries: {limit: 1, backoff: 0s}")
        .replace(
            "time.sleep(float(sys.argv[1]))",
            "time.sleep(float(sys.argv[1]) if os.environ['EVENTFLOW_ATTEMPT'] == '1' else 0)",
        )
        .replace("import sys, time", "import os, sys, time"),
    )
    data = tmp_path / "data"
    async with server_factory(resources, data_dir=data, shutdown_grace_seconds=0.2) as server:
        await server.client.post("/webhooks/hook", json={"seconds": 30})
        [created] = await server.wait_runs(1)
        await wait_step_state(server, created["id"], "work", "Running")
        # Running means spawned; the interpreter may not have printed yet on a busy machine.
        await wait_log(server, created["id"], "work", "working\n")
    async with server_factory(resources, data_dir=data) as server:
        run = await server.wait_run(created["id"])
        assert run["state"] == "Succeeded"
        assert step(run, "work")["attempt"] == 2
        first = await server.client.get(
            f"/api/v1/runs/{created['id']}/steps/work/logs", params={"attempt": 1}
        )
        assert first.text == "working\n"


async def test_send_through_the_api_starts_a_run(server_factory):
    """A structured CloudEvent posted to /api/v1/events as sensor 'uploads' starts a run."""
    async with server_factory(EXAMPLES) as server:
        event = json.loads((EXAMPLES / "events" / "upload.json").read_text())
        response = await server.client.post(
            "/api/v1/events", params={"sensor": "uploads"}, json=event
        )
        assert response.status_code == 202
        assert response.json() == {"id": "upload-0001"}
        [created] = await server.wait_runs(1)
        assert created["event_id"] == "upload-0001"


async def test_health_and_readiness(server_factory):
    """/healthz answers ok; /readyz lists the sensors once started."""
    async with server_factory(EXAMPLES) as server:
        assert (await server.client.get("/healthz")).json() == {"status": "ok"}
        ready = await server.client.get("/readyz")
        assert ready.json() == {
            "status": "ready",
            "sensors": [
                {"name": "github", "connected": None},
                {"name": "uploads", "connected": None},
            ],
        }


async def test_webhook_event_runs_over_the_nats_bus(server_factory):
    """With bus.url nats://, a webhook event travels through JetStream and starts its run."""
    tag = uuid.uuid4().hex[:12]
    bus = BusSettings(url=NATS_URL, stream=f"TEST_{tag}", subject_prefix=f"test.{tag}.events")
    try:
        async with server_factory(EXAMPLES, bus=bus) as server:
            response = await server.client.post("/webhooks/uploads", json=UPLOAD)
            assert response.status_code == 202
            [created] = await server.wait_runs(1)
            run = await server.wait_run(created["id"])
            assert run["state"] == "Succeeded"
            assert run["event_id"] == response.json()["id"]
    finally:
        client = await nats_connection()
        for name in (bus.stream, f"{bus.stream}_DLQ"):
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(name)
        await client.close()
