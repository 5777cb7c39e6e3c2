"""The push endpoint's answers: 202 once on the bus, exact 4xx for bad input, nothing stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.protocol import HttpRequest, SensorContext
from eventflow.sensing.state import MemorySensorState
from sensors.objectstore import ObjectStoreConfig, ObjectStorePushSensor, plugin
from sensors.objectstore.reporting import SEEN

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
S3_DOCUMENT = {
    "Records": [
        {
            "eventName": "ObjectCreated:Put",
            "awsRegion": "eu-west-1",
            "eventTime": "2024-05-01T12:00:00.000Z",
            "responseElements": {"x-amz-request-id": "R1"},
            "s3": {
                "bucket": {"name": "raw-data"},
                "object": {"key": "in/a+b%2Bc.csv", "size": 3, "sequencer": "0A"},
            },
        }
    ]
}


def push_sensor() -> tuple[ObjectStorePushSensor, MemorySensorState]:
    state = MemorySensorState(lambda: NOW)
    config = ObjectStoreConfig.model_validate({"mode": "push", "push": {"path": "s3"}})
    sensor = plugin.create("pushed", config, SensorContext(state=state, clock=lambda: NOW))
    assert isinstance(sensor, ObjectStorePushSensor)
    return sensor, state


def request(body: Any, method: str = "POST", headers: dict[str, str] | None = None) -> HttpRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpRequest(method, "s3", headers or {}, {}, raw)


class Emitted(list[Event]):
    async def __call__(self, event: Event) -> ReceivedEvent:
        self.append(event)
        return ReceivedEvent(event, "pushed", NOW)


async def test_an_sns_notification_is_unwrapped_and_answered_202_with_its_ids() -> None:
    """The S3 document in an SNS envelope's Message becomes an event; its key is decoded."""
    sensor, state = push_sensor()
    emit = Emitted()
    envelope = {"Type": "Notification", "TopicArn": "arn:t", "Message": json.dumps(S3_DOCUMENT)}
    reply = await sensor.handle(request(envelope), emit)
    assert (reply.status, reply.body) == (202, {"ids": [emit[0].id]})
    assert emit[0].subject == "in/a b+c.csv"
    assert len(await state.scan(SEEN)) == 1


async def test_bad_input_is_answered_with_its_reason_and_nothing_is_emitted_or_stored() -> None:
    """A wrong SNS type, a GET, an oversized body: exact answers, no event, no state."""
    sensor, state = push_sensor()
    emit = Emitted()
    wrong_type = await sensor.handle(request({"Type": "Weird", "Message": "{}"}), emit)
    get = await sensor.handle(request(S3_DOCUMENT, method="GET"), emit)
    big = await sensor.handle(request(b"x" * (sensor.max_body_bytes + 1)), emit)
    assert (wrong_type.status, wrong_type.body) == (
        400,
        {
            "error": "Type: 'Weird' is not an SNS notification; only Type 'Notification' carries"
            " an S3 document (a SubscriptionConfirmation is answered by the push listener)"
        },
    )
    assert (get.status, get.body) == (405, {"error": "method GET is not allowed; use POST"})
    assert (big.status, big.body) == (413, {"error": "body is larger than 1048576 bytes"})
    assert emit == []
    assert await state.scan(SEEN) == []
    assert sensor.reporter.counts.rejected == 1


async def test_an_s3_test_event_is_accepted_without_an_event() -> None:
    """s3:TestEvent: 202 with no ids, counted as skipped."""
    sensor, _ = push_sensor()
    emit = Emitted()
    reply = await sensor.handle(request({"Event": "s3:TestEvent", "Bucket": "raw-data"}), emit)
    assert (reply.status, reply.body, emit) == (202, {"ids": []}, [])
    assert sensor.reporter.counts.skipped == 1
