"""`MemorySensorState`: a sensor's state in a dict, for tests and for sensors run by hand.

It keeps the same rules as the store's (expiry on read, keys ordered as UTF-8 bytes) so a
sensor tested on it behaves the same on SQLite or PostgreSQL; the contract suite runs on all
three. It survives nothing: the service always gives sensors the store's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from eventflow.sensing.protocol import SensorContext, SpaceWrite


def check_space(space: str) -> None:
    if not space:
        raise ValueError("space: an empty name; name the use of the state, e.g. 'seen'")


def check_scan_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit: {limit} is not a positive number of entries")


def utc_now() -> datetime:
    return datetime.now(UTC)


class SpacesState(ABC):
    """The one-space calls of `SensorState`, each one `read_spaces` or `write_spaces` call."""

    @abstractmethod
    async def read_spaces(self, keys: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        """The live values of `keys` by space, in one read."""

    @abstractmethod
    async def write_spaces(self, writes: Sequence[SpaceWrite]) -> None:
        """Every write, in order, all or none."""

    async def get(self, space: str, key: str) -> str | None:
        return (await self.get_many(space, [key])).get(key)

    async def get_many(self, space: str, keys: Sequence[str]) -> dict[str, str]:
        return (await self.read_spaces({space: keys}))[space]

    async def put_many(
        self, space: str, items: Mapping[str, str], *, expires_at: datetime | None = None
    ) -> None:
        await self.write_spaces([SpaceWrite(space, items, expires_at)])

    async def delete_many(self, space: str, keys: Sequence[str]) -> None:
        await self.write_spaces([SpaceWrite(space, delete=keys)])


class MemorySensorState(SpacesState):
    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[str, datetime | None]] = {}

    async def read_spaces(self, keys: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        for space in keys:
            check_space(space)
        now = self._clock()
        found: dict[str, dict[str, str]] = {space: {} for space in keys}
        for space, wanted in keys.items():
            for key in wanted:
                entry = self._entries.get((space, key))
                if entry is not None and (entry[1] is None or entry[1] > now):
                    found[space][key] = entry[0]
        return found

    async def write_spaces(self, writes: Sequence[SpaceWrite]) -> None:
        # Checked before anything changes, so a refused call leaves no part of it behind.
        for write in writes:
            check_space(write.space)
        for write in writes:
            for key, value in write.put.items():
                self._entries[(write.space, key)] = (value, write.expires_at)
            for key in write.delete:
                self._entries.pop((write.space, key), None)

    async def scan(
        self, space: str, *, prefix: str = "", after: str | None = None, limit: int = 1000
    ) -> list[tuple[str, str]]:
        check_space(space)
        check_scan_limit(limit)
        now = self._clock()
        after_bytes = None if after is None else after.encode()
        entries = sorted(
            (key.encode(), key, value)
            for (entry_space, key), (value, expires_at) in self._entries.items()
            if entry_space == space
            and key.startswith(prefix)
            and (expires_at is None or expires_at > now)
        )
        return [
            (key, value)
            for encoded, key, value in entries
            if after_bytes is None or encoded > after_bytes
        ][:limit]

    async def purge_expired(self, now: datetime) -> int:
        expired = [
            place
            for place, (_, expires_at) in self._entries.items()
            if expires_at is not None and expires_at <= now
        ]
        for place in expired:
            del self._entries[place]
        return len(expired)


def memory_context(clock: Callable[[], datetime] = utc_now) -> SensorContext:
    """A context for a sensor created outside the service: its state lives in memory."""
    return SensorContext(state=MemorySensorState(clock), clock=clock)
