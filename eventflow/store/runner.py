"""Running one store operation as one database transaction.

An operation is a synchronous function of a SQLAlchemy `Connection`. On SQLite a `write` or a
`lookup` (a read of a few rows by key) runs on the caller's thread: on the event loop, a
thread would cost more than the transaction, and its GIL wait behind the loop made the
engine store webhook events at a third of the rate they arrived (bench/webhooks.py). A write
goes to the dedicated writer thread when another process holds SQLite's write lock (the
thread waits for it, the loop does not), and so does a `write_bulk`, whose size the caller
does not bound; other reads run on a small pool of reader threads that WAL lets run beside
the writer. On PostgreSQL every operation runs through the asyncpg engine with `run_sync`,
reads in REPEATABLE READ so that a reader's statements share one snapshot. Connection
failures become TemporaryError. This module knows no table: `operations.py` holds the queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar, cast

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from eventflow.errors import TemporaryError
from eventflow.store import migrations

log = structlog.get_logger()

T = TypeVar("T")
Operation = Callable[[Connection], T]

# Reads are short; two threads let a slow listing not hold up a get_run behind it.
_READER_THREADS = 2
# The WAL's size past which the writer thread checkpoints it (SQLite's own default, 1,000
# pages of 4 KiB), and to which the store's connections have SQLite truncate it when it
# starts over: so a WAL larger than this holds that much not yet checkpointed.
_CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024


class Runner(Protocol):
    """Runs operations as transactions on one database."""

    @property
    def dialect(self) -> str:
        """The SQLAlchemy dialect's name: sqlite or postgresql."""
        ...

    async def read(self, operation: Operation[T]) -> T: ...

    async def lookup(self, operation: Operation[T]) -> T:
        """A read of a few rows by key, so short that on SQLite it runs on the caller's thread:
        there the hop to a reader thread and back costs more than the read (a webhook's
        redelivery check: ~30% more deliveries per second, bench/webhooks.py). Never a read
        whose size the caller does not bound: the event loop waits for it."""
        ...

    async def write(self, operation: Operation[T]) -> T:
        """A write of as many rows as the caller bounds (one batch, one run): on SQLite it
        runs on the caller's thread when the write lock is free, as a lookup does."""
        ...

    async def write_bulk(self, operation: Operation[T]) -> T:
        """A write whose size the caller does not bound (a purge, a migration): on SQLite it
        runs on the writer thread, never on the event loop."""
        ...

    async def close(self) -> None: ...


def connect(url: URL) -> Runner:
    """The runner for a URL from `migrations.parse_url`; it connects on first use."""
    where = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        return ThreadRunner(migrations.sqlite_engine(url), where)
    return AsyncRunner(migrations.postgres_engine(url), where)


@contextlib.contextmanager
def _temporary_errors(where: str) -> Iterator[None]:
    """Connection failures as TemporaryError naming the store, its password hidden."""
    try:
        yield
    except (OperationalError, InterfaceError) as error:
        raise TemporaryError(
            f"store {where}: {error.orig}; check that the database is up"
        ) from error
    except sqlite3.OperationalError as error:  # from the BEGIN sent to the driver directly
        raise TemporaryError(f"store {where}: {error}; check that the database is up") from error
    except OSError as error:
        raise TemporaryError(
            f"store {where}: {error}; check that the database is up and reachable"
        ) from error


def _transaction(connection: Connection, begin: str, operation: Operation[T]) -> T:
    # pysqlite's own implicit BEGIN is off (see migrations), so the mode is chosen here:
    # IMMEDIATE takes the write lock up front, so a writer waits at BEGIN for another
    # process's writer instead of failing halfway through. It goes straight to the driver:
    # through SQLAlchemy this one statement would cost as much as one of the operation's own.
    with connection.begin():
        try:
            _driver(connection).execute(begin)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise _LockHeldError(*error.args) from error
            raise
        return operation(connection)


class _LockHeldError(sqlite3.OperationalError):
    """BEGIN found another connection holding the lock, and waited as long as it may."""


def _driver(connection: Connection) -> sqlite3.Connection:
    return cast(sqlite3.Connection, connection.connection.driver_connection)


class ThreadRunner:
    """SQLite through a synchronous engine: writes and lookups on the caller's thread, the
    rest, and what would wait for SQLite's lock, one hop away on a thread.

    The event loop's thread keeps one connection open for its writes and lookups, and the
    writer thread one for its own: that spares each transaction a pool checkout and reset.
    The loop's connection never waits in SQLite's busy handler, and never checkpoints the
    WAL inside a commit (which syncs the disk): the writer thread does that once the WAL has
    grown past _CHECKPOINT_WAL_BYTES. A caller cancelled while its transaction runs on a
    thread does not stop it: the transaction commits or rolls back there, and only the answer
    is lost. Callers write state before acting on it, so a write that lands unseen is one they
    would have retried anyway.
    """

    def __init__(self, engine: Engine, where: str) -> None:
        self._engine = engine
        self._where = where
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="eventflow-store-writer")
        self._readers = ThreadPoolExecutor(
            _READER_THREADS, thread_name_prefix="eventflow-store-reader"
        )
        self._write_connection: Connection | None = None  # only the writer thread uses it
        self._inline_connection: Connection | None = None  # only the event loop's thread does
        self._wal = f"{engine.url.database}-wal"
        self._checkpoint: asyncio.Future[None] | None = None

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def read(self, operation: Operation[T]) -> T:
        return await self._hop(self._readers, self._read_whole, operation)

    async def lookup(self, operation: Operation[T]) -> T:
        with _temporary_errors(self._where):
            return _transaction(self._inline(), "BEGIN", operation)

    async def write(self, operation: Operation[T]) -> T:
        with _temporary_errors(self._where):
            try:
                result = _transaction(self._inline(), "BEGIN IMMEDIATE", operation)
            except _LockHeldError:
                # Another process writes: the writer thread waits for the lock, not the loop.
                return await self.write_bulk(operation)
        self._checkpoint_when_due()
        return result

    async def write_bulk(self, operation: Operation[T]) -> T:
        return await self._hop(self._writer, self._write_whole, operation)

    def _inline(self) -> Connection:
        if self._inline_connection is None:
            self._inline_connection = self._connect(
                "PRAGMA busy_timeout=0", "PRAGMA wal_autocheckpoint=0"
            )
        return self._inline_connection

    def _writer_connection(self) -> Connection:
        if self._write_connection is None:
            self._write_connection = self._connect()
        return self._write_connection

    def _connect(self, *pragmas: str) -> Connection:
        connection = self._engine.connect()
        # Whichever connection starts the WAL over truncates it to this size.
        for pragma in (f"PRAGMA journal_size_limit={_CHECKPOINT_WAL_BYTES}", *pragmas):
            _driver(connection).execute(pragma)
        return connection

    def _checkpoint_when_due(self) -> None:
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return  # not in WAL mode, or not written yet: nothing to checkpoint
        if size > _CHECKPOINT_WAL_BYTES:
            loop = asyncio.get_running_loop()
            self._checkpoint = loop.run_in_executor(self._writer, self._checkpoint_wal)

    def _checkpoint_wal(self) -> None:
        try:
            # PASSIVE copies what no reader still needs and waits for nobody; the first write
            # after a complete one starts the WAL over, truncated to the limit.
            _driver(self._writer_connection()).execute("PRAGMA wal_checkpoint(PASSIVE)")
        except (sqlite3.Error, OperationalError) as error:
            log.warning("store checkpoint failed, will retry", store=self._where, error=str(error))

    async def _hop(
        self,
        threads: ThreadPoolExecutor,
        whole: Callable[[Operation[T]], T],
        operation: Operation[T],
    ) -> T:
        loop = asyncio.get_running_loop()
        with _temporary_errors(self._where):
            return await loop.run_in_executor(threads, whole, operation)

    def _read_whole(self, operation: Operation[T]) -> T:
        with self._engine.connect() as connection:
            return _transaction(connection, "BEGIN", operation)

    def _write_whole(self, operation: Operation[T]) -> T:
        return _transaction(self._writer_connection(), "BEGIN IMMEDIATE", operation)

    async def close(self) -> None:
        # Joining the threads waits for the transactions they run; it must not block the loop.
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        for connection in (self._write_connection, self._inline_connection):
            if connection is not None:
                connection.close()
        self._engine.dispose()


class AsyncRunner:
    """PostgreSQL through the asyncpg engine; the operation runs inside `run_sync`."""

    def __init__(self, engine: AsyncEngine, where: str) -> None:
        self._engine = engine
        self._read_engine = engine.execution_options(isolation_level="REPEATABLE READ")
        self._where = where

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def read(self, operation: Operation[T]) -> T:
        return await self._run(self._read_engine, operation)

    async def lookup(self, operation: Operation[T]) -> T:
        return await self.read(operation)

    async def write(self, operation: Operation[T]) -> T:
        return await self._run(self._engine, operation)

    async def write_bulk(self, operation: Operation[T]) -> T:
        return await self.write(operation)

    async def _run(self, engine: AsyncEngine, operation: Operation[T]) -> T:
        with _temporary_errors(self._where):
            async with engine.begin() as connection:
                return await connection.run_sync(operation)

    async def close(self) -> None:
        await self._engine.dispose()
