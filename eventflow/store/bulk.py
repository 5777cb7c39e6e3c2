"""`BulkInsert`: an INSERT run for many rows straight through the driver's executemany.

SQLAlchemy handles each row's parameters in Python (a dict of them, a bind processor for each
value), and on the store's hot paths (every event and its decisions, a sensor's state) that
held the SQLite writer thread's GIL longer than the database's own work. A `BulkInsert` takes
rows as tuples holding what the driver binds, already converted: JSON as text from
`jsoncodec.dumps_text`, datetimes from `tables.driver_utc`. It runs no other statement.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection
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
