"""The object-store sensor inside eventflow: a bucket change -> event -> trigger -> run, and
notifications pushed to /webhooks/ (MinIO webhook target, SNS HTTP subscription)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ROOT, free_port
from tests.s3_servers import (  # noqa: F401  # registers the server fixtures
    S3Server,
    aws_environment_fixture,
    ministack_fixture,
    moto_fixture,
    notifying_bucket,
    unique,
)

RESOURCES = """
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: uploads}
spec:
  objectstore: %s
---
apiVersion: eventflow.io/v1alpha1
kind: Trigger
metadata: {name: on-upload}
spec:
  events:
    upload: {sensor: uploads, filter: 'data.key.endsWith(".csv")'}
  workflow: show
  arguments: {key: "{{ events.upload.data.key }}"}
---
apiVersion: eventflow.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: show}
spec:
  parameters: [{name: key}]
  steps:
    - name: show
      command: [python3, -c, "import sys; print(sys.argv[1])", "{{ params.key }}"]
"""

AWKWARD = "in/q3 report+final 100%=ok ü.csv"


def resources(tmp_path: Path, spec: dict[str, Any]) -> Path:
    directory = tmp_path / "resources"
    directory.mkdir(exist_ok=True)
    (directory / "resources.yaml").write_text(textwrap.dedent(RESOURCES % json.dumps(spec)))
    return directory


async def step_log(server: Any, run: dict[str, Any]) -> str:
    reply = await server.client.get(f"/api/v1/runs/{run['id']}/steps/show/logs")
    return str(reply.text)


async def test_an_object_put_starts_a_run_with_its_exact_key(
    ministack: S3Server, server_factory: Any, tmp_path: Path
) -> None:
    """Bucket -> SQS -> sensor -> bus -> trigger -> run; the step prints the key as put."""
    async with notifying_bucket(ministack) as wired:
        spec = ministack.spec("sqs", sqs={"queueUrl": wired.queue_url, "waitSeconds": 1})
        async with server_factory(resources(tmp_path, spec)) as server:
            async with ministack.client("s3") as s3:
                await s3.put_object(Bucket=wired.bucket, Key=AWKWARD, Body=b"1,2")
            [created] = await server.wait_runs(1)
            run = await server.wait_run(created["id"])
            assert run["state"] == "Succeeded", run
            assert run["arguments"] == {"key": AWKWARD}
            assert await step_log(server, run) == f"{AWKWARD}\n"
            ready = (await server.client.get("/readyz")).json()
            assert {"name": "uploads", "connected": True, "problem": None} in ready["sensors"]


async def test_readyz_shows_what_keeps_a_sensor_from_its_missing_queue(
    moto: S3Server, server_factory: Any, tmp_path: Path
) -> None:
    """A queue that does not exist: /readyz names the sensor, not connected, and the problem
    in words (the service itself stays ready); once the queue exists the problem clears."""
    queue = unique("q")
    spec = moto.spec("sqs", sqs={"queueName": queue, "waitSeconds": 1})
    async with server_factory(resources(tmp_path, spec)) as server:
        async with asyncio.timeout(10):
            while True:
                reply = await server.client.get("/readyz")
                [uploads] = reply.json()["sensors"]
                if uploads["problem"] is not None:
                    break
                await asyncio.sleep(0.05)
        assert reply.status_code == 200
        assert uploads == {
            "name": "uploads",
            "connected": False,
            "problem": f"queue {queue}: the queue does not exist"
            " (AWS.SimpleQueueService.NonExistentQueue); create it or fix sqs.queueUrl",
        }
        async with moto.client("sqs") as sqs:
            await sqs.create_queue(QueueName=queue)
        async with asyncio.timeout(15):
            while uploads["problem"] is not None:
                await asyncio.sleep(0.1)
                [uploads] = (await server.client.get("/readyz")).json()["sensors"]
        assert uploads == {"name": "uploads", "connected": True, "problem": None}
        assert await server.stored_events() == []


MINIO_BODY = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "images/a b.csv",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": "2024-05-01T12:00:00.456Z",
            "eventName": "s3:ObjectCreated:Put",
            "responseElements": {"x-amz-request-id": "17CB3A0A0C9B8E6F"},
            "s3": {
                "bucket": {"name": "images"},
                "object": {"key": "a+b.csv", "size": 3, "eTag": "e", "sequencer": "17CB3A0A0D4C"},
            },
        }
    ],
}


async def test_a_minio_webhook_notification_starts_one_run_even_when_sent_twice(
    server_factory: Any, tmp_path: Path
) -> None:
    """MinIO's webhook target, with its bearer token, POSTed twice: 202 twice, one run."""
    spec = {
        "mode": "push",
        "push": {
            "path": "minio",
            "auth": {"bearer": {}, "secrets": [{"env": "MINIO_HOOK_TOKEN"}]},
        },
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINIO_HOOK_TOKEN", "s3cret")
        async with server_factory(resources(tmp_path, spec)) as server:
            headers = {"Authorization": "Bearer s3cret"}
            first = await server.client.post("/webhooks/minio", json=MINIO_BODY, headers=headers)
            second = await server.client.post("/webhooks/minio", json=MINIO_BODY, headers=headers)
            refused = await server.client.post("/webhooks/minio", json=MINIO_BODY)
            [created] = await server.wait_runs(1)
            run = await server.wait_run(created["id"])
            runs = (await server.client.get("/api/v1/runs")).json()["runs"]
    assert (first.status_code, second.status_code, refused.status_code) == (202, 202, 401)
    assert len(first.json()["ids"]) == 1
    assert second.json() == {"ids": []}
    assert run["arguments"] == {"key": "a b.csv"}
    assert len(runs) == 1


@pytest.fixture
async def subscribe_url() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback stand-in for SNS's SubscribeURL; yields its URL and the paths it was asked."""
    asked: list[str] = []

    async def confirm(request: web.Request) -> web.Response:
        asked.append(request.path_qs)
        return web.Response(text="<ConfirmSubscriptionResponse/>")

    app = web.Application()
    app.router.add_get("/confirm", confirm)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/confirm?Token=abc", asked
    await runner.cleanup()


async def test_an_sns_subscription_is_confirmed_only_on_an_allowed_host(
    server_factory: Any, tmp_path: Path, subscribe_url: tuple[str, list[str]]
) -> None:
    """SubscriptionConfirmation: GET on an allowed host; 403 and no request elsewhere."""
    url, asked = subscribe_url
    host = url.split("/")[2]
    spec = {"mode": "push", "push": {"path": "sns", "snsHosts": [host], "snsAllowHttp": True}}
    confirmation = {"Type": "SubscriptionConfirmation", "TopicArn": "arn:t", "SubscribeURL": url}
    elsewhere = {**confirmation, "SubscribeURL": "http://169.254.169.254/latest/meta-data/"}
    headers = {"x-amz-sns-message-type": "SubscriptionConfirmation"}
    async with server_factory(resources(tmp_path, spec)) as server:
        confirmed = await server.client.post("/webhooks/sns", json=confirmation, headers=headers)
        refused = await server.client.post("/webhooks/sns", json=elsewhere, headers=headers)
        bad = await server.client.post("/webhooks/sns", content=b"{", headers={})
        await asyncio.sleep(0)
        events = await server.stored_events()
    assert (confirmed.status_code, confirmed.json()) == (200, {"status": "confirmed"})
    assert asked == ["/confirm?Token=abc"]
    assert refused.status_code == 403
    assert refused.json()["error"] == (
        "SubscribeURL 'http://169.254.169.254/latest/meta-data/': host '169.254.169.254' is not"
        f" in push.snsHosts ({host})"
    )
    assert (bad.status_code, bad.json()["error"]) == (
        400,
        "message body: not JSON (Expecting property name enclosed in double quotes at 1:2)",
    )
    assert events == []


def test_the_objectstore_examples_validate() -> None:
    """examples/objectstore/* (MinIO by webhook, Kafka and NATS, AWS SQS, polling) load as a
    user would serve them, side by side."""
    eventflow = str(Path(sys.executable).with_name("eventflow"))
    examples = ROOT / "examples" / "objectstore"
    names = ("minio-webhook", "minio-kafka", "minio-nats", "aws-sqs", "polling")
    directories = [str(examples / name) for name in names]
    result = subprocess.run(
        [eventflow, "validate", *directories],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "ok: 5 sensor(s), 5 trigger(s), 5 workflow template(s)\n"
