"""`SqlSensorState`: one sensor's keys and values in the `sensor_state` table.

Each call is one transaction through the store's runner, like every other store call;
`read_spaces` and `write_spaces` cover several spaces in that one transaction. Keys are
compared as bytes (the table's collation), so `scan` pages through them in the order S3 lists
objects. Long key lists are split into chunks so no statement outgrows the database's limit on
bound parameters; rows are upserted by one statement run for many rows. This module does not
decide what a sensor keeps or for how long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, and_, bindparam, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from eventflow.sensing.protocol import SpaceWrite
from eventflow.sensing.state import SpacesState, check_scan_limit, check_space
from eventflow.store.bulk import BulkInsert, SelectByKeys
from eventflow.store.records import aware_utc
from eventflow.store.runner import Runner
from eventflow.store.tables import UtcDateTime, driver_utc, sensor_state

T = TypeVar("T")
# SQLite allows 32,766 bound parameters since 3.32 and PostgreSQL 65,535; a chunk binds one per key.
_CHUNK = 500
LOOKUP_KEYS = 64
"""Up to this many keys a read is a `Runner.lookup`: a webhook's redelivery check, each
request's keys read together with those of the requests that arrived meanwhile."""
# Built once with bind parameters (an expanding one for the keys), so that a call finds them
# compiled in SQLAlchemy's cache instead of building a statement and its cache key each time.
_IN_KEYS = and_(
    sensor_state.c.sensor == bindparam("p_sensor"),
    sensor_state.c.space == bindparam("p_space"),
    sensor_state.c.key.in_(bindparam("p_keys", expanding=True)),
)
_GET = select(sensor_state.c.key, sensor_state.c.value).where(
    _IN_KEYS,
    or_(
        sensor_state.c.expires_at.is_(None),
        sensor_state.c.expires_at > bindparam("p_now", type_=UtcDateTime()),
    ),
)
_GET_BY_KEYS = SelectByKeys(_GET, "p_keys")
_DELETE = delete(sensor_state).where(_IN_KEYS)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SqlSensorState(SpacesState):
    """The state of the sensor `sensor`; `clock` gives the aware UTC now that expiry uses."""

    def __init__(self, runner: Runner, sensor: str, clock: Callable[[], datetime]) -> None:
        self._runner = runner
        self._sensor = sensor
        self._clock = clock
        insert = postgresql.insert if runner.dialect == "postgresql" else sqlite.insert
        statement = insert(sensor_state)
        # Built once and run with a list of rows (executemany): a multi-row VALUES is compiled
        # again for every number of rows and cost more than the database's own work.
        self._upsert = BulkInsert(
            statement.on_conflict_do_update(
                index_elements=["sensor", "space", "key"],
                set_={
                    "value": statement.excluded.value,
                    "expires_at": statement.excluded.expires_at,
                },
            )
        )
        self._driver_utc = driver_utc(runner.dialect)

    def _now(self) -> datetime:
        return aware_utc(self._clock(), "clock()")

    async def read_spaces(self, keys: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        for space in keys:
            check_space(space)
        found: dict[str, dict[str, str]] = {space: {} for space in keys}
        wanted = [(space, list(names)) for space, names in keys.items() if names]
        if not wanted:
            return found
        now = self._driver_utc(self._now())

        def read(connection: Connection) -> dict[str, dict[str, str]]:
            for space, names in wanted:
                values = {"p_sensor": self._sensor, "p_space": space, "p_now": now}
                for chunk in _chunks(names):
                    rows = _GET_BY_KEYS(connection, chunk, values)
                    found[space].update((key, value) for key, value in rows)
            return found

        if sum(len(names) for _, names in wanted) <= LOOKUP_KEYS:
            return await self._runner.lookup(read)
        return await self._runner.read(read)

    async def write_spaces(self, writes: Sequence[SpaceWrite]) -> None:
        for write in writes:
            check_space(write.space)
        steps = [
            (write.space, self._rows(write), list(write.delete))
            for write in writes
            if write.put or write.delete
        ]
        if not steps:
            return

        def apply(connection: Connection) -> None:
            for space, rows, gone in steps:
                if rows:
                    self._upsert(connection, rows)
                for keys in _chunks(gone):
                    connection.execute(
                        _DELETE, {"p_sensor": self._sensor, "p_space": space, "p_keys": keys}
                    )

        await self._runner.write(apply)

    def _rows(self, write: SpaceWrite) -> list[tuple[object, ...]]:
        """The rows `_upsert` binds, the expiry converted for the driver once for them all."""
        expiry = None
        if write.expires_at is not None:
            expiry = self._driver_utc(aware_utc(write.expires_at, "expires_at"))
        return [(self._sensor, write.space, key, value, expiry) for key, value in write.put.items()]

    async def scan(
        self, space: str, *, prefix: str = "", after: str | None = None, limit: int = 1000
    ) -> list[tuple[str, str]]:
        check_space(space)
        check_scan_limit(limit)
        key = sensor_state.c.key
        conditions = [
            sensor_state.c.sensor == self._sensor,
            sensor_state.c.space == space,
            or_(sensor_state.c.expires_at.is_(None), sensor_state.c.expires_at > self._now()),
        ]
        if prefix:
            # The range lets the primary key's index find the start; substr keeps it exact.
            conditions += [key >= prefix, func.substr(key, 1, len(prefix)) == prefix]
        if after is not None:
            conditions.append(key > after)
        query = select(key, sensor_state.c.value).where(*conditions).order_by(key).limit(limit)

        def read(connection: Connection) -> list[tuple[str, str]]:
            return [(row.key, row.value) for row in connection.execute(query)]

        return await self._runner.read(read)

    async def purge_expired(self, now: datetime) -> int:
        moment = aware_utc(now, "now")

        def write(connection: Connection) -> int:
            result = connection.execute(
                delete(sensor_state).where(
                    sensor_state.c.sensor == self._sensor, sensor_state.c.expires_at <= moment
                )
            )
            return result.rowcount

        return await self._runner.write_bulk(write)
