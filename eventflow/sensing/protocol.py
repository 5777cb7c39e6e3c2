"""The Sensor seam. eventflow knows only this; each kind lives in its own plugin package,
registered under the `eventflow.sensors` entry-point group as a `SensorPlugin`.

Two shapes of sensor exist:
- a pulling sensor connects to its source in `run(emit)` and acknowledges the source only
  after `emit` returned (the event is then on the bus);
- a pushed sensor (`HttpSensor`) is called by eventflow's HTTP listener for requests under
  `/webhooks/<path>` and answers them; its `run` only waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.limiting import ProcessRateLimits, RateLimits

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


@dataclass(frozen=True, slots=True)
class SpaceWrite:
    """What one `SensorState.write_spaces` call does to one space: put `put`'s entries, all
    expiring at `expires_at` (None: never), then delete the keys in `delete`."""

    space: str
    put: Mapping[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None
    delete: Sequence[str] = ()


class SensorState(Protocol):
    """A sensor's own keys and values in eventflow's store: checkpoints, dedupe windows.

    Keys and values are text (structured values are JSON); `space` keeps apart the uses one
    sensor has ("listing", "seen"). An entry past its `expires_at` reads as absent. Keys sort
    as UTF-8 bytes, the order S3 lists objects in, so a listing can be merged with `scan`.
    Write state only after the event it accounts for is on the bus: a crash in between emits
    again, which the engine's run dedupe absorbs, where the other order would lose the event.
    A sensor that keeps several spaces per batch reads and writes them with `read_spaces` and
    `write_spaces`: one round trip and one transaction each, where a call per space costs one
    transaction per space.
    """

    async def get(self, space: str, key: str) -> str | None: ...

    async def get_many(self, space: str, keys: Sequence[str]) -> dict[str, str]: ...

    async def put_many(
        self, space: str, items: Mapping[str, str], *, expires_at: datetime | None = None
    ) -> None: ...

    async def delete_many(self, space: str, keys: Sequence[str]) -> None: ...

    async def read_spaces(self, keys: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        """The live entries among `keys` (space -> keys), as space -> key -> value, every
        space of `keys` present (empty when none of its keys is); one read."""
        ...

    async def write_spaces(self, writes: Sequence[SpaceWrite]) -> None:
        """Apply `writes` in order, all or none: one transaction."""
        ...

    async def scan(
        self, space: str, *, prefix: str = "", after: str | None = None, limit: int = 1000
    ) -> list[tuple[str, str]]:
        """Up to `limit` entries whose key starts with `prefix` and sorts after `after`."""
        ...

    async def purge_expired(self, now: datetime) -> int:
        """Delete the entries that expired before `now`; return how many."""
        ...


@dataclass(frozen=True, slots=True)
class SensorContext:
    """What eventflow lends a sensor it creates."""

    state: SensorState  # this sensor's own, by its name
    clock: Callable[[], datetime]  # aware UTC now
    # where its rate limit's tokens come from (shared by the processes answering its requests)
    rate_limits: RateLimits = field(default_factory=ProcessRateLimits)


@runtime_checkable
class ReportsConnection(Protocol):
    """Optional: a sensor that holds a connection to its source says whether it is up now.

    /readyz lists it; a sensor without a connection of its own (a webhook) need not have it."""

    @property
    def connected(self) -> bool: ...


@runtime_checkable
class ReportsProblem(Protocol):
    """Optional, beside `ReportsConnection`: why the sensor cannot use its source now, in words
    the user can act on ("queue 'x' does not exist", "access denied on bucket 'y'"); None
    while all is well. /readyz shows it next to `connected`."""

    @property
    def problem(self) -> str | None: ...


class SensorPlugin(Protocol):
    """What a sensor package registers under the `eventflow.sensors` entry-point group."""

    @property
    def config_model(self) -> type[BaseModel]:
        """The strict pydantic model of `spec.<kind>` in a Sensor document."""
        ...

    def create(self, name: str, config: BaseModel, context: SensorContext) -> Sensor: ...
