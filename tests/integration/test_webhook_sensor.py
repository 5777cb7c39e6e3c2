"""The webhook sensor answering requests, with the real in-memory bus and the real intake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import cast

import pytest
from structlog.testing import capture_logs

from eventflow.bus.memory import MemoryBus, MemoryDelivery
from eventflow.errors import BusUnavailableError
from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest, HttpSensor
from eventflow.sensing.state import memory_context
from sensors.webhook import WebhookSensor, plugin
from tests.conftest import FIXTURES

RECEIVED_AT = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)
REQUEST_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PUSH = FIXTURES / "github" / "push--payload.json"
SENTINEL = Event(id="sentinel", source="/test", type="test.sentinel")


def make_sensor(**spec: object) -> WebhookSensor:
    config = plugin.config_model.model_validate(
        {
            "path": "github",
            "event": {
                "type": "com.github.{{ headers['x-github-event'] }}",
                "id": "{{ headers['x-github-delivery'] }}",
                "subject": "{{ body.repository.full_name }}",
            },
            **spec,
        }
    )
    sensor = plugin.create("gh", config, memory_context())
    assert isinstance(sensor, WebhookSensor)
    return WebhookSensor(sensor.name, sensor.config, clock=lambda: REQUEST_TIME)


def github_request(delivery: str = "d-1", method: str = "POST") -> HttpRequest:
    headers = {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": delivery,
    }
    return HttpRequest(method, "github", headers, {}, PUSH.read_bytes())


@pytest.fixture
def emit(bus: MemoryBus) -> Emit:
    return make_emit("gh", bus, lambda: RECEIVED_AT)


async def on_bus(bus: MemoryBus, count: int) -> list[ReceivedEvent]:
    """The next `count` events a fresh consumer group gets, acknowledged."""
    # MemoryBus.subscribe is an async generator; closing it ends the consumer cleanly.
    deliveries = cast(AsyncGenerator[MemoryDelivery, None], bus.subscribe("test"))
    events = []
    try:
        async with asyncio.timeout(2):
            for _ in range(count):
                delivery = await anext(deliveries)
                await delivery.ack()
                events.append(delivery.event)
    finally:
        await deliveries.aclose()
    return events


async def test_accepted_request_is_on_the_bus_when_202_is_answered(
    bus: MemoryBus, emit: Emit
) -> None:
    """202 carries the event id, and the stamped event is already on the bus."""
    with capture_logs() as logs:
        reply = await make_sensor().handle(github_request("d-1"), emit)
    assert reply == HttpReply(202, {"id": "d-1"})
    [received] = await on_bus(bus, 1)
    assert (received.sensor, received.received_at) == ("gh", RECEIVED_AT)
    assert received.event == Event(
        id="d-1",
        source="/webhooks/github",
        type="com.github.push",
        subject="Codertocat/Hello-World",
        time=REQUEST_TIME,
        datacontenttype="application/json",
        data=json.loads(PUSH.read_bytes()),
    )
    assert logs == [
        {
            "event": "event received",
            "log_level": "info",
            "event_id": "d-1",
            "sensor": "gh",
            "type": "com.github.push",
        }
    ]


async def test_batch_is_published_in_order_and_answered_with_every_id(
    bus: MemoryBus, emit: Emit
) -> None:
    """A CloudEvents batch gets 202 with all ids, each event on the bus in order."""
    documents = [
        {"specversion": "1.0", "id": f"b-{n}", "source": "/s", "type": "t"} for n in range(3)
    ]
    headers = {"content-type": "application/cloudevents-batch+json"}
    request = HttpRequest("POST", "github", headers, {}, json.dumps(documents).encode())
    reply = await make_sensor().handle(request, emit)
    assert reply == HttpReply(202, {"ids": ["b-0", "b-1", "b-2"]})
    assert [received.id for received in await on_bus(bus, 3)] == ["b-0", "b-1", "b-2"]


async def test_method_not_allowed_is_405_with_allow_header(bus: MemoryBus, emit: Emit) -> None:
    """A PUT to a POST-only webhook is refused with the methods it takes, and nothing is sent."""
    sensor = make_sensor(methods=["POST", "PATCH"])
    with capture_logs() as logs:
        reply = await sensor.handle(github_request(method="put"), emit)
    assert reply == HttpReply(
        405,
        {"error": "method PUT is not allowed on /webhooks/github; use POST, PATCH"},
        {"Allow": "POST, PATCH"},
    )
    assert logs == [
        {
            "event": "webhook rejected",
            "log_level": "info",
            "sensor": "gh",
            "status": 405,
            "error": "method PUT is not allowed on /webhooks/github; use POST, PATCH",
        }
    ]
    await emit(SENTINEL)
    assert [received.id for received in await on_bus(bus, 1)] == ["sentinel"]


async def test_other_allowed_method_is_accepted(bus: MemoryBus, emit: Emit) -> None:
    """A PATCH is taken when the config lists PATCH."""
    reply = await make_sensor(methods=["patch"]).handle(github_request(method="PATCH"), emit)
    assert reply == HttpReply(202, {"id": "d-1"})


@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        (
            HttpRequest("POST", "github", {"content-type": "text/plain"}, {}, b"hi"),
            415,
            "content-type 'text/plain' is not accepted; send application/json (or another"
            " +json type), application/x-www-form-urlencoded, application/cloudevents+json,"
            " application/cloudevents-batch+json, or a binary-mode CloudEvent (a ce-specversion"
            " header and ce-* attribute headers)",
        ),
        (
            HttpRequest("POST", "github", {"content-type": "application/json"}, {}, b"{"),
            400,
            "body is not valid JSON: Expecting property name enclosed in double quotes at 1:2",
        ),
        (
            HttpRequest("POST", "github", {"content-type": "application/json"}, {}, b"{}"),
            400,
            "event.type: the template \"com.github.{{ headers['x-github-event'] }}\" failed on"
            " this request: \"headers['x-github-event']\": no such key: x-github-event",
        ),
        (
            HttpRequest("POST", "github", {"content-type": "application/json"}, {}, b"1" * 65),
            413,
            "body is larger than 64 bytes, the maxBodyBytes of sensor gh",
        ),
    ],
    ids=["unsupported-type", "bad-json", "template-fails", "too-large"],
)
async def test_bad_request_is_answered_with_its_status_and_nothing_is_sent(
    bus: MemoryBus, emit: Emit, request_: HttpRequest, status: int, message: str
) -> None:
    """Normalizing errors become `{"error": ...}` replies; the bus stays empty."""
    reply = await make_sensor(maxBodyBytes=64).handle(request_, emit)
    assert reply == HttpReply(status, {"error": message})
    await emit(SENTINEL)
    assert [received.id for received in await on_bus(bus, 1)] == ["sentinel"]


async def test_closed_bus_is_503_with_retry_after(bus: MemoryBus, emit: Emit) -> None:
    """When the bus does not take the event the sender is told to retry, not acknowledged."""
    await bus.close()
    reply = await make_sensor().handle(github_request(), emit)
    assert reply == HttpReply(
        503,
        {"error": "the bus is stopping; send the event again shortly"},
        {"Retry-After": "1"},
    )
    await bus.start()
    await emit(SENTINEL)
    assert [received.id for received in await on_bus(bus, 1)] == ["sentinel"]


async def test_batch_interrupted_by_a_full_bus_is_503() -> None:
    """If the bus refuses part of a batch, the whole request is answered 503 for a retry."""
    bus = MemoryBus(max_pending=1)
    await bus.start()
    documents = [
        {"specversion": "1.0", "id": f"b-{n}", "source": "/s", "type": "t"} for n in (1, 2)
    ]
    headers = {"content-type": "application/cloudevents-batch+json"}
    request = HttpRequest("POST", "github", headers, {}, json.dumps(documents).encode())
    reply = await make_sensor().handle(request, make_emit("gh", bus, lambda: RECEIVED_AT))
    assert reply == HttpReply(
        503, {"error": "the bus is full; send the event again shortly"}, {"Retry-After": "1"}
    )
    assert [received.id for received in await on_bus(bus, 1)] == ["b-1"]


async def test_intake_propagates_a_failing_publish(bus: MemoryBus, emit: Emit) -> None:
    """emit raises BusUnavailableError and logs nothing when the bus is closed."""
    await bus.close()
    with capture_logs() as logs, pytest.raises(BusUnavailableError) as caught:
        await emit(SENTINEL)
    assert str(caught.value) == "the bus is stopping; send the event again shortly"
    assert logs == []


async def test_sensor_is_an_http_sensor_whose_run_waits_until_cancelled(emit: Emit) -> None:
    """run() does nothing but wait; cancelling it ends it."""
    sensor = make_sensor()
    assert isinstance(sensor, HttpSensor)
    task = asyncio.create_task(sensor.run(emit))
    await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
