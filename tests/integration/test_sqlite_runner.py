"""Where SQLite transactions run: writes on the event loop's thread unless another process
holds the write lock, bulk writes and WAL checkpoints on the writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from eventflow.store import migrations
from eventflow.store.runner import Runner, connect

WAL_LIMIT = 4 * 1024 * 1024
# Rows of 64 KiB: the test's writes outgrow the WAL limit in a few transactions.
ROW = "x" * 65536


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    opened = connect(migrations.parse_url(f"sqlite+aiosqlite:///{tmp_path / 'eventflow.db'}"))
    await opened.write_bulk(lambda db: db.execute(text("CREATE TABLE blobs (body TEXT)")))
    yield opened
    await opened.close()


def insert(rows: int) -> Callable[[Connection], tuple[str, int]]:
    """An operation adding `rows` rows; it answers its thread's name and the table's size."""

    def write(connection: Connection) -> tuple[str, int]:
        connection.execute(text("INSERT INTO blobs VALUES (:body)"), [{"body": ROW}] * rows)
        count = connection.execute(text("SELECT count(*) FROM blobs")).scalar_one()
        return threading.current_thread().name, count

    return write


async def test_a_write_runs_on_the_event_loops_thread_and_a_bulk_write_on_the_writer(
    runner: Runner,
) -> None:
    assert await runner.write(insert(1)) == (threading.current_thread().name, 1)
    thread, count = await runner.write_bulk(insert(1))
    assert thread.startswith("eventflow-store-writer")
    assert count == 2


async def test_a_write_waits_on_the_writer_thread_while_another_process_holds_the_lock(
    runner: Runner, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "eventflow.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.create_task(runner.write(insert(1)))
        # The loop is free meanwhile: a lookup answers, the write waits.
        rows = await asyncio.wait_for(
            runner.lookup(lambda db: db.execute(text("SELECT count(*) FROM blobs")).scalar_one()),
            timeout=5,
        )
        assert rows == 0
        await asyncio.sleep(0.2)
        assert not write.done()
    finally:
        other.execute("ROLLBACK")
        other.close()
    thread, count = await asyncio.wait_for(write, timeout=5)
    assert thread.startswith("eventflow-store-writer")
    assert count == 1
    # The lock is free again: the next write is back on the loop's thread.
    assert await runner.write(insert(1)) == (threading.current_thread().name, 2)


async def test_the_writer_thread_checkpoints_a_wal_grown_past_its_limit(
    runner: Runner, tmp_path: Path
) -> None:
    database, wal = tmp_path / "eventflow.db", tmp_path / "eventflow.db-wal"
    written = 0
    while wal.stat().st_size <= WAL_LIMIT:
        await runner.write(insert(8))
        written += 8
        # The loop's own commits never copy the WAL into the database file.
        assert database.stat().st_size < WAL_LIMIT
    async with asyncio.timeout(10):
        while database.stat().st_size < written * len(ROW):
            await asyncio.sleep(0.05)
    # The next write starts the WAL over, truncated to the limit.
    await runner.write(insert(1))
    assert wal.stat().st_size <= WAL_LIMIT
    assert (
        await runner.lookup(lambda db: db.execute(text("SELECT count(*) FROM blobs")).scalar_one())
        == written + 1
    )
