"""Store hot paths: `python bench/store.py [--events 64] [--rounds 50] [--keys 32]`.

What the service's store does for each webhook delivery, timed from the caller:
`record_dispatches` for batches of N events, each with a GitHub push payload (~7 KB) as its
data and one unmatched decision (the event insert with its JSON document is what costs), and
a sensor's state `get_many` (half the keys present) then `put_many` with an expiry for batches
of 32 keys, as the webhook sensor's dedupe ledger does once per batch. It runs on a temporary
SQLite file, then on PostgreSQL at --postgres (in a schema of its own, dropped afterwards) when
a server answers there.

Each line prints the wall time and the CPU time of the whole process (every thread: the SQLite
writer's GIL time is what this is for) per event or per key, from the median round of each.
Nothing here is asserted: these are figures for the closing note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from eventflow.events import Event, ReceivedEvent
from eventflow.store.records import Decision, DispatchItem
from eventflow.store.sql import SqlStore

PAYLOAD = Path(__file__).parent.parent / "tests" / "fixtures" / "github" / "push--payload.json"
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def batch_of(events: int, round_number: int) -> list[DispatchItem]:
    """`events` push events with ids new in each round, so every insert writes a row."""
    data = json.loads(PAYLOAD.read_text())
    now = datetime.now(UTC)
    batch: list[DispatchItem] = []
    for number in range(events):
        event = Event(
            id=f"r{round_number}-e{number}",
            source="https://github.com/octo/repo",
            type="com.github.push",
            subject="refs/heads/main",
            time=now,
            datacontenttype="application/json",
            data=data,
        )
        received = ReceivedEvent(event=event, sensor="github", received_at=now)
        batch.append((received, [Decision("on-push", False, "type differs", None)], []))
    return batch


async def timed(rounds: int, action: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    """The median wall seconds and process CPU seconds of one round of `action`."""
    await action(-1)  # warm up: the compiled statements, the connections
    walls: list[float] = []
    cpus: list[float] = []
    for number in range(rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        await action(number)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return statistics.median(walls), statistics.median(cpus)


def report(label: str, per: str, count: int, wall: float, cpu: float) -> None:
    print(
        f"  {label:<34} {wall / count * 1e6:8.1f} µs/{per} wall"
        f"  {cpu / count * 1e6:8.1f} µs/{per} CPU"
    )


async def measure(url: str, events: int, rounds: int, keys: int) -> None:
    store = await SqlStore.open(url)
    try:
        batches = {number: batch_of(events, number) for number in range(-1, rounds)}
        now = datetime.now(UTC)

        async def dispatch(number: int) -> None:
            await store.record_dispatches(batches[number], now)

        wall, cpu = await timed(rounds, dispatch)
        report(f"record_dispatches, {events} events", "event", events, wall, cpu)

        state = store.sensor_state("github", lambda: datetime.now(UTC))
        names = {
            number: [f"delivery-{number}-{key:04d}-{uuid.uuid4()}" for key in range(keys)]
            for number in range(-1, rounds)
        }
        expiry = datetime.now(UTC) + timedelta(days=1)
        for batch in names.values():  # half of each get_many's keys are there
            await state.put_many("seen", dict.fromkeys(batch[::2], "1"), expires_at=expiry)

        async def get_many(number: int) -> None:
            await state.get_many("seen", names[number])

        async def put_many(number: int) -> None:
            await state.put_many("seen", dict.fromkeys(names[number], "1"), expires_at=expiry)

        wall, cpu = await timed(rounds, get_many)
        report(f"sensor state get_many, {keys} keys", "key", keys, wall, cpu)
        wall, cpu = await timed(rounds, put_many)
        report(f"sensor state put_many, {keys} keys", "key", keys, wall, cpu)
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def postgres_schema(admin_url: str) -> AsyncIterator[str | None]:
    """The URL of a new role and schema of its own name (None when no server answers);
    both are dropped afterwards."""
    name = f"eventflow_bench_{uuid.uuid4().hex}"
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f"CREATE ROLE {name} LOGIN"))
            await connection.execute(text(f"CREATE SCHEMA {name} AUTHORIZATION {name}"))
    except OSError as error:
        print(f"PostgreSQL at {admin_url} is unreachable ({error}); skipped")
        await engine.dispose()
        yield None
        return
    try:
        yield admin_url.replace("postgres@", f"{name}@", 1)
    finally:
        async with engine.connect() as connection:
            await connection.execute(text(f"DROP SCHEMA {name} CASCADE"))
            await connection.execute(text(f"DROP ROLE {name}"))
        await engine.dispose()


async def main(events: int, rounds: int, keys: int, postgres: str) -> None:
    print(f"{rounds} rounds each (medians of a round; CPU: the whole process)")
    with tempfile.TemporaryDirectory() as directory:
        print("SQLite")
        await measure(f"sqlite+aiosqlite:///{directory}/eventflow.db", events, rounds, keys)
    async with postgres_schema(postgres) as url:
        if url is not None:
            print("PostgreSQL")
            await measure(url, events, rounds, keys)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=64, help="events per batch")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--keys", type=int, default=32, help="keys per sensor-state call")
    parser.add_argument("--postgres", default=POSTGRES, help="an admin URL; a schema is made")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.rounds, arguments.keys, arguments.postgres))
