"""Fixtures for integration tests: `store_url`, a fresh empty database on each backend, and
`bus`, a started in-memory bus.

Each PostgreSQL test gets a login role and a schema of the same name in database `test`: the
default search_path ("$user", public) puts every table the test makes in that schema, so tests
run in parallel without meeting (and much faster than a CREATE DATABASE per test). They skip
only when no server answers at 127.0.0.1:5432.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import pool, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from eventflow.bus.memory import MemoryBus

POSTGRES = "127.0.0.1:5432"


async def _as_admin(*statements: str) -> None:
    engine = create_async_engine(
        f"postgresql+asyncpg://postgres@{POSTGRES}/test",
        isolation_level="AUTOCOMMIT",
        poolclass=pool.NullPool,
    )
    try:
        connection: AsyncConnection = await engine.connect()
    except (OSError, OperationalError) as error:
        await engine.dispose()
        pytest.skip(f"PostgreSQL at {POSTGRES} is unreachable: {error}")
    try:
        for statement in statements:
            await connection.execute(text(statement))
    finally:
        await connection.close()
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a SQLite file in tmp_path, or a new PostgreSQL schema."""
    async with empty_database(request.param, tmp_path) as url:
        yield url


@contextlib.asynccontextmanager
async def empty_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty "sqlite" or "postgres" database, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'eventflow.db'}"
        return
    name = f"eventflow_test_{uuid.uuid4().hex}"
    await _as_admin(f"CREATE ROLE {name} LOGIN", f"CREATE SCHEMA {name} AUTHORIZATION {name}")
    try:
        yield f"postgresql+asyncpg://{name}@{POSTGRES}/test"
    finally:
        await _as_admin(f"DROP SCHEMA {name} CASCADE", f"DROP ROLE {name}")


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    """A started in-memory bus, closed after the test."""
    memory = MemoryBus()
    await memory.start()
    yield memory
    await memory.close()
