"""The Sensor seam. eventflow knows only this; each kind lives in its own plugin package,
registered under the `eventflow.sensors` entry-point group as a `SensorPlugin`.

Two shapes of sensor exist:
- a pulling sensor connects to its source in `run(emit)` and acknowledges the source only
  after `emit` returned (the event is then on the bus);
- a pushed sensor (`HttpSensor`) is called by eventflow's HTTP listener for requests under
  `/webhooks/<path>` and answers them; its `run` only waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from eventflow.events import Event, ReceivedEvent

Emit = Callable[[Event], Awaitable[ReceivedEvent]]
"""Stamp the event with the sensor's name and publish it; returns once the bus holds it."""


class Sensor(Protocol):
    name: str

    async def run(self, emit: Emit) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request as received, before any parsing: the raw body is what signatures cover."""

    method: str
    path: str  # the part after /webhooks/
    headers: Mapping[str, str]  # lower-cased names
    query: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class HttpSensor(Protocol):
    name: str

    @property
    def path(self) -> str:
        """The path under /webhooks/ this sensor answers, without a leading slash."""
        ...

    @property
    def max_body_bytes(self) -> int: ...

    async def run(self, emit: Emit) -> None: ...

    async def handle(self, request: HttpRequest, emit: Emit) -> HttpReply: ...


class SensorPlugin(Protocol):
    """What a sensor package registers under the `eventflow.sensors` entry-point group."""

    @property
    def config_model(self) -> type[BaseModel]:
        """The strict pydantic model of `spec.<kind>` in a Sensor document."""
        ...

    def create(self, name: str, config: BaseModel) -> Sensor: ...
