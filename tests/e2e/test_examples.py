"""Every directory under examples/ is valid, and the stream examples work as their comments say.

The NATS and Kafka examples run against real brokers (the machine's JetStream, a tansu broker)
with their stream, subjects and topics renamed per test, so parallel tests and earlier runs on
the same server never meet; everything else is the example as a user copies it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from nats.js.api import StreamConfig
from typer.testing import CliRunner

from eventflow.cli import app
from tests.conftest import ROOT
from tests.contract.conftest import nats_connection
from tests.kafka_broker import (
    Broker,
    kafka_broker_fixture,  # noqa: F401  # registers the `kafka_broker` fixture
)

EXAMPLE_DIRECTORIES = sorted(path for path in (ROOT / "examples").iterdir() if path.is_dir())


@pytest.mark.parametrize("directory", EXAMPLE_DIRECTORIES, ids=lambda path: path.name)
def test_every_example_directory_validates(directory: Path) -> None:
    """`eventflow validate examples/<name>` passes for each example a README points to."""
    result = CliRunner().invoke(app, ["validate", str(directory)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")


def renamed_copy(example: str, tmp_path: Path, renames: dict[str, str]) -> Path:
    target = tmp_path / example
    shutil.copytree(ROOT / "examples" / example, target)
    resources = target / "resources.yaml"
    text = resources.read_text()
    for old, new in renames.items():
        assert old in text, f"examples/{example} no longer mentions {old!r}"
        text = text.replace(old, new)
    resources.write_text(text)
    return target


def arguments_of(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    return sorted((run["arguments"] for run in runs), key=json.dumps)


def run_of(runs: list[dict[str, Any]], **arguments: str) -> str:
    """The id of the one run started with these arguments (runs started in one batch share
    their creation time, so list order does not tell them apart)."""
    [found] = [run["id"] for run in runs if run["arguments"].items() >= arguments.items()]
    return str(found)


async def test_nats_example_starts_one_fulfilment_per_order(
    tmp_path: Path, server_factory: Any
) -> None:
    """Orders on JetStream start one run each; a repeat, a zero total and poison start none."""
    suffix = uuid.uuid4().hex[:12]
    stream, prefix = f"ORDERS_{suffix}", f"orders_{suffix}"
    resources = renamed_copy(
        "nats",
        tmp_path,
        {
            "stream: ORDERS": f"stream: {stream}",
            "orders.>": f"{prefix}.>",
            "type: com.example.orders.created": f"type: com.example.{prefix}.created",
            "orders.poison": f"poison_{suffix}",
            "consumer: eventflow-orders": f"consumer: eventflow-{suffix}",
        },
    )
    client = await nats_connection()
    js = client.jetstream()
    poison = f"poison_{suffix}"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>", poison]))
    try:
        for payload in (
            {"id": "o-1", "total": 42.5, "customer": "c-7"},
            {"id": "o-1", "total": 42.5, "customer": "c-7"},
            {"id": "o-2", "total": 0.0, "customer": "c-8"},
            {"id": "o-3", "total": 9.0, "customer": "c-9"},
        ):
            await js.publish(f"{prefix}.created", json.dumps(payload).encode())
        await js.publish(f"{prefix}.created", b"not json")
        async with server_factory(resources) as server:
            runs = await server.wait_runs(2)
            finished = [await server.wait_run(run["id"]) for run in runs]
            assert [run["state"] for run in finished] == ["Succeeded", "Succeeded"]
            assert arguments_of(finished) == [
                {"order": "o-1", "customer": "c-7"},
                {"order": "o-3", "customer": "c-9"},
            ]
            first = run_of(finished, order="o-1")
            notify = await server.client.get(f"/api/v1/runs/{first}/steps/notify/logs")
            assert notify.text == "telling c-7 about r-o-1\n"
            # Four orders became stored events, only two ran; the poison went aside, once.
            assert len(await server.stored_events()) == 4
            assert len((await server.client.get("/api/v1/runs")).json()["runs"]) == 2
            set_aside = await js.get_last_msg(stream, poison)
            assert set_aside.data == b"not json"
    finally:
        await js.delete_stream(stream)
        await client.close()


async def test_kafka_example_settles_payments_it_accepts(
    tmp_path: Path, server_factory: Any, kafka_broker: Broker
) -> None:
    """Payment records start a settlement when the currency and amount pass the trigger."""
    suffix = uuid.uuid4().hex[:12]
    topic = f"payments-{suffix}"
    resources = renamed_copy(
        "kafka",
        tmp_path,
        {
            '"127.0.0.1:9092"': f'"{kafka_broker.bootstrap}"',
            "topics: [payments]": f"topics: [{topic}]",
            "payments.poison": f"{topic}.poison",
            "groupId: eventflow-payments": f"groupId: eventflow-{suffix}",
        },
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1), NewTopic(f"{topic}.poison", 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, payment in (
            ("p-1", {"id": "p-1", "amount": 1200, "currency": "EUR"}),
            ("p-2", {"id": "p-2", "amount": 1200, "currency": "GBP"}),
            ("p-3", {"id": "p-3", "amount": 50, "currency": "USD"}),
            ("p-4", {"id": "p-4", "amount": 100, "currency": "USD"}),
        ):
            await producer.send_and_wait(topic, json.dumps(payment).encode(), key=key.encode())
    finally:
        await producer.stop()
    async with server_factory(resources) as server:
        runs = await server.wait_runs(2, timeout=30.0)
        finished = [await server.wait_run(run["id"]) for run in runs]
        assert [run["state"] for run in finished] == ["Succeeded", "Succeeded"]
        assert arguments_of(finished) == [
            {"payment": "p-1", "amount": "1200"},
            {"payment": "p-4", "amount": "100"},
        ]
        first = run_of(finished, payment="p-1")
        settle = await server.client.get(f"/api/v1/runs/{first}/steps/settle/logs")
        assert settle.text == "settling p-1 for 1200\n"
