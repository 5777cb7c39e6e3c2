"""Getting a database ready for the store: the engine for a store URL (SQLite pragmas and
transaction modes) and the alembic upgrade to the newest revision, run from code.

SQLite gets a synchronous pysqlite engine, because the store runs each SQLite transaction
whole on a thread of its own; PostgreSQL gets an asyncpg engine. The user-facing URL stays
`sqlite+aiosqlite:///...` either way. The script location is this package's own directory,
so it works from an installed wheel with no alembic.ini. It runs no query of the store's:
`operations.py` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event, func, select
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventflow import jsoncodec
from eventflow.errors import ConfigError

HERE = Path(__file__).parent
DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
# Any fixed number: replicas opening one PostgreSQL database at once take turns migrating.
_MIGRATION_LOCK = 0x6576656E74666C6F
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


def parse_url(url: str) -> URL:
    """A supported store URL, or a ConfigError that shows the accepted forms."""
    accepted = "sqlite+aiosqlite:///path/eventflow.db or postgresql+asyncpg://user@host/db"
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise ConfigError(f"store url {url!r} is not a database URL; use {accepted}") from error
    if parsed.drivername not in DRIVERS:
        raise ConfigError(
            f"store url: driver {parsed.drivername!r} is not supported; use {accepted}"
        )
    if parsed.drivername.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        raise ConfigError(f"store url {url!r} names no database file; use {accepted}")
    return parsed


def _sqlite_connect(connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is turned off: the store's runner begins each
    # transaction itself, DEFERRED to read and IMMEDIATE to write.
    connection.isolation_level = None
    cursor = connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def sqlite_engine(url: URL) -> Engine:
    """A synchronous engine on the file of a SQLite URL from `parse_url`; creates its
    directory. Its connections may be used from any thread, one thread at a time."""
    Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = create_sync_engine(
        url.set(drivername="sqlite+pysqlite"),
        json_serializer=jsoncodec.dumps_text,
        json_deserializer=jsoncodec.loads,
    )
    event.listen(engine, "connect", _sqlite_connect)
    return engine


def postgres_engine(url: URL) -> AsyncEngine:
    """An asyncpg engine for a PostgreSQL URL from `parse_url`."""
    # SQLAlchemy's JSON and JSONB types call the serializer on bind, and its asyncpg codecs
    # call the deserializer on the text of each value read.
    return create_async_engine(
        url,
        pool_pre_ping=True,
        json_serializer=jsoncodec.dumps_text,
        json_deserializer=jsoncodec.loads,
    )


def upgrade(connection: Connection) -> None:
    """Migrate the database to head inside the caller's (write) transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
    config = Config()
    # configparser treats % as interpolation, and an install path may hold one.
    config.set_main_option("script_location", str(HERE).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
