"""Alembic environment for the store's schema.

`SqlStore.open` hands over an open connection in `config.attributes["connection"]` and owns
its transaction. Run by hand (`alembic -x url=...`), this file opens an async engine on the
URL itself. It does not create data directories or pick a database: the caller does.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from eventflow.store.tables import metadata


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_url(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_migrate)
    finally:
        await engine.dispose()


_given = context.config.attributes.get("connection")
if _given is not None:
    _migrate(_given)
else:
    _url = context.get_x_argument(as_dictionary=True).get("url")
    if _url is None:
        raise SystemExit(
            "alembic: pass the store URL as -x url=sqlite+aiosqlite:///path/eventflow.db"
        )
    asyncio.run(_migrate_url(_url))
