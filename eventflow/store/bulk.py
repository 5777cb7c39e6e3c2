"""Statements of the store's hot paths run straight through the driver: `BulkInsert`, an
INSERT for many rows through the driver's executemany, and `SelectByKeys`, a SELECT of rows by
a list of keys.

SQLAlchemy handles each row's parameters in Python (a dict of them, a bind processor for each
value) and expands an IN list anew on every call; on the store's hot paths (every event and
its decisions, a sensor's state, a webhook's redelivery check) that took longer than the
database's own work. These take what the driver binds, already converted: JSON as text from
`jsoncodec.dumps_text`, datetimes from `tables.driver_utc`; they return the driver's values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Select
from sqlalchemy.sql.dml import Insert


class BulkInsert:
    """`statement`, an INSERT of every column of its table (an ON CONFLICT clause is fine),
    compiled on first use for the connection's dialect; a store uses one dialect."""

    def __init__(self, statement: Insert) -> None:
        self._statement = statement
        self._sql: str | None = None

    def __call__(self, connection: Connection, rows: Sequence[tuple[object, ...]]) -> None:
        """Insert `rows`, each with its values in the table's column order."""
        if self._sql is None:
            compiled = self._statement.compile(dialect=connection.dialect)
            columns = [column.key for column in self._statement.table.columns]
            if compiled.positiontup != columns:
                raise ValueError(f"{compiled.string}: binds {compiled.positiontup}, not {columns}")
            self._sql = compiled.string
        connection.exec_driver_sql(self._sql, rows)


class SelectByKeys:
    """`statement`, a SELECT whose one expanding bind parameter `keys` takes a list of keys,
    compiled on first use for each dialect and size of list. Lists are
    padded to the next power of two with their first key (an IN list may repeat one), so a
    few texts cover every size and stay in the driver's cache of prepared statements."""

    def __init__(self, statement: Select[Any], keys: str) -> None:
        self._statement = statement
        self._keys = keys
        # (dialect, size of the list) -> (SQL, each placeholder's key position or parameter)
        self._compiled: dict[tuple[str, int], tuple[str, list[int | str]]] = {}

    def __call__(
        self, connection: Connection, keys: Sequence[object], values: Mapping[str, object]
    ) -> Sequence[Sequence[Any]]:
        """The rows for `keys` (at least one), the other parameters from `values`."""
        size = 1 << (len(keys) - 1).bit_length()
        compiled = self._compiled.get((connection.dialect.name, size))
        if compiled is None:
            compiled = self._compile(connection, size, values)
            self._compiled[connection.dialect.name, size] = compiled
        sql, order = compiled
        padded = [*keys, *[keys[0]] * (size - len(keys))]
        arguments = tuple(padded[slot] if isinstance(slot, int) else values[slot] for slot in order)
        return connection.exec_driver_sql(sql, arguments).all()

    def _compile(
        self, connection: Connection, size: int, values: Mapping[str, object]
    ) -> tuple[str, list[int | str]]:
        bound = self._statement.params({**dict.fromkeys(values), self._keys: [None] * size})
        compiled = bound.compile(
            dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
        )
        prefix = f"{self._keys}_"
        order: list[int | str] = [
            int(name[len(prefix) :]) - 1
            if name.startswith(prefix) and name[len(prefix) :].isdigit()
            else name
            for name in compiled.positiontup or ()
        ]
        return compiled.string, order
