"""Running one store operation as one database transaction, with one event-loop hop.

An operation is a synchronous function of a SQLAlchemy `Connection`. On SQLite it runs whole
on a thread: writes on one dedicated writer thread (which also serializes this process's
writers, so none of them sleeps in SQLite's busy handler waiting for another), reads on a
small pool of reader threads that WAL lets run beside the writer. On PostgreSQL it runs
through the asyncpg engine with `run_sync`, reads in REPEATABLE READ so that a reader's
statements share one snapshot. A `lookup`, a read of a few rows by key, runs on SQLite on
the caller's thread instead. Connection failures become TemporaryError. This module knows no
table: `operations.py` holds the queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from eventflow.errors import TemporaryError
from eventflow.store import migrations

T = TypeVar("T")
Operation = Callable[[Connection], T]

# Reads are short; two threads let a slow listing not hold up a get_run behind it.
_READER_THREADS = 2


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

    async def write(self, operation: Operation[T]) -> T: ...

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
        cast(sqlite3.Connection, connection.connection.driver_connection).execute(begin)
        return operation(connection)


class ThreadRunner:
    """SQLite through a synchronous engine: each transaction is one hop to a thread.

    The writer thread keeps one connection open for good, which spares each write a pool
    checkout and reset; so does the event loop's thread for its lookups. A caller cancelled
    while its transaction runs does not stop it: the transaction commits or rolls back on its
    thread, and only the answer is lost. Callers write state before acting on it, so a write
    that lands unseen is one they would have retried anyway.
    """

    def __init__(self, engine: Engine, where: str) -> None:
        self._engine = engine
        self._where = where
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="eventflow-store-writer")
        self._readers = ThreadPoolExecutor(
            _READER_THREADS, thread_name_prefix="eventflow-store-reader"
        )
        self._write_connection: Connection | None = None  # only the writer thread uses it
        self._lookup_connection: Connection | None = None  # only the event loop's thread does

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def read(self, operation: Operation[T]) -> T:
        return await self._hop(self._readers, self._read_whole, operation)

    async def lookup(self, operation: Operation[T]) -> T:
        with _temporary_errors(self._where):
            if self._lookup_connection is None:
                self._lookup_connection = self._engine.connect()
            return _transaction(self._lookup_connection, "BEGIN", operation)

    async def write(self, operation: Operation[T]) -> T:
        return await self._hop(self._writer, self._write_whole, operation)

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
        if self._write_connection is None:
            self._write_connection = self._engine.connect()
        return _transaction(self._write_connection, "BEGIN IMMEDIATE", operation)

    async def close(self) -> None:
        # Joining the threads waits for the transactions they run; it must not block the loop.
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        for connection in (self._write_connection, self._lookup_connection):
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

    async def _run(self, engine: AsyncEngine, operation: Operation[T]) -> T:
        with _temporary_errors(self._where):
            async with engine.begin() as connection:
                return await connection.run_sync(operation)

    async def close(self) -> None:
        await self._engine.dispose()
