"""`SqlWebhooks`: the webhook endpoints registered through the REST API, in table `webhooks`.

A row keeps the `spec.webhook` a user sent (secrets as references: `{env}` or `{file}`), so the
endpoint is created again, the same, when eventflow restarts. Names and paths are unique: a
conflict raises `WebhookConflictError` naming which one, whether this process or another
replica got there first. Each call is one transaction through the store's runner. This module
does not validate specs or know about sensors defined in YAML: the API checks both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from eventflow.store.records import aware_utc
from eventflow.store.runner import Runner
from eventflow.store.tables import webhooks

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RegisteredWebhook:
    """One registered endpoint: its sensor name, its path, and the spec as sent."""

    name: str
    path: str
    spec: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime


class WebhookConflictError(Exception):
    """A name or path that another registered webhook already holds."""

    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def _path_holder(connection: Connection, path: str, other_than: str) -> str | None:
    """The name of another webhook registered at `path`, if there is one."""
    query = select(webhooks.c.name).where(webhooks.c.path == path, webhooks.c.name != other_than)
    return connection.execute(query).scalar_one_or_none()


def _path_taken(path: str, holder: str | None) -> WebhookConflictError:
    owner = f"webhook {holder!r}" if holder else "another webhook"
    return WebhookConflictError(f"path {path!r} is already served by {owner}", holder)


class SqlWebhooks:
    """Registered webhooks on the store's database."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def list_all(self) -> list[RegisteredWebhook]:
        """Every registered webhook, by name."""

        def read(connection: Connection) -> list[RegisteredWebhook]:
            rows = connection.execute(select(webhooks).order_by(webhooks.c.name))
            return [RegisteredWebhook(**row._mapping) for row in rows]

        return await self._runner.read(read)

    async def get(self, name: str) -> RegisteredWebhook | None:
        def read(connection: Connection) -> RegisteredWebhook | None:
            row = connection.execute(select(webhooks).where(webhooks.c.name == name)).first()
            return None if row is None else RegisteredWebhook(**row._mapping)

        return await self._runner.read(read)

    async def create(
        self, name: str, path: str, spec: Mapping[str, Any], now: datetime
    ) -> RegisteredWebhook:
        """Keep a new webhook; WebhookConflictError when its name or path is taken."""
        now = aware_utc(now, "now")
        values = {"name": name, "path": path, "spec": dict(spec)}

        def write(connection: Connection) -> RegisteredWebhook:
            taken = select(webhooks.c.name).where(webhooks.c.name == name)
            if connection.execute(taken).first() is not None:
                raise WebhookConflictError(f"a webhook named {name!r} is already registered", name)
            holder = _path_holder(connection, path, other_than=name)
            if holder is not None:
                raise _path_taken(path, holder)
            connection.execute(insert(webhooks).values(**values, created_at=now, updated_at=now))
            return RegisteredWebhook(name, path, dict(spec), now, now)

        return await self._write(write, f"webhook {name!r} at path {path!r}")

    async def replace(
        self, name: str, path: str, spec: Mapping[str, Any], now: datetime
    ) -> RegisteredWebhook | None:
        """Replace the spec of `name`; None when no such webhook is registered."""
        now = aware_utc(now, "now")

        def write(connection: Connection) -> RegisteredWebhook | None:
            row = connection.execute(select(webhooks).where(webhooks.c.name == name)).first()
            if row is None:
                return None
            holder = _path_holder(connection, path, other_than=name)
            if holder is not None:
                raise _path_taken(path, holder)
            connection.execute(
                update(webhooks)
                .where(webhooks.c.name == name)
                .values(path=path, spec=dict(spec), updated_at=now)
            )
            return RegisteredWebhook(name, path, dict(spec), row.created_at, now)

        return await self._write(write, f"path {path!r}")

    async def delete(self, name: str) -> bool:
        """Forget `name`; whether it was registered."""

        def write(connection: Connection) -> bool:
            deleted = connection.execute(delete(webhooks).where(webhooks.c.name == name))
            return bool(deleted.rowcount)

        return await self._runner.write(write)

    async def _write(self, operation: Callable[[Connection], T], what: str) -> T:
        try:
            return await self._runner.write(operation)
        except IntegrityError as error:
            # Another replica committed the same name or path between our check and insert.
            raise WebhookConflictError(
                f"{what} was registered by another replica at the same moment; list the"
                " webhooks and try again"
            ) from error
