"""Intake: the one door from a sensor to the bus.

`make_emit` gives each sensor its `emit`: it stamps what the sender claimed with the sensor's
name and the arrival time (`ReceivedEvent`), publishes it, and returns only once the bus holds
it, so a sensor acknowledges its source only after that (promise 1). A bus that cannot take
the event raises BusUnavailableError to the sensor, which answers or retries its source.
Intake does not normalize, filter or retry: sensors normalize, the engine filters.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from eventflow.bus.protocol import Publisher
from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.protocol import Emit

log = structlog.get_logger()


def make_emit(sensor_name: str, bus: Publisher, clock: Callable[[], datetime]) -> Emit:
    """The `emit` for sensor `sensor_name`: stamp with `clock()`, publish on `bus`."""

    async def emit(event: Event) -> ReceivedEvent:
        received = ReceivedEvent(event, sensor_name, clock())
        await bus.publish(received)
        log.info("event received", event_id=event.id, sensor=sensor_name, type=event.type)
        return received

    return emit
