"""SqlStore against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

from eventflow.errors import ConfigError, TemporaryError
from eventflow.events import Event, ReceivedEvent
from eventflow.store import migrations
from eventflow.store.records import Decision, NewRun, RunFinishedError, StepLog, StepRecord
from eventflow.store.sql import SqlStore
from eventflow.store.tables import metadata

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def received(event_id: str = "e1", sensor: str = "uploads", at: datetime = T0) -> ReceivedEvent:
    return ReceivedEvent(
        event=Event(id=event_id, source="s3://raw", type="object.created", data={"key": "a.csv"}),
        sensor=sensor,
        received_at=at,
    )


def new_run(run_id: str, trigger: str = "etl", dedupe_key: str = "k1") -> NewRun:
    return NewRun(
        id=run_id,
        trigger=trigger,
        workflow="etl",
        dedupe_key=dedupe_key,
        arguments={"key": "a.csv"},
        workflow_spec={"steps": [{"name": "extract"}]},
        step_names=("extract", "transform", "load"),
    )


def started(run_id: str, trigger: str = "etl") -> Decision:
    return Decision(trigger=trigger, matched=True, reason=None, run_id=run_id)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(store_url)
    yield opened
    await opened.close()


async def dispatch(store: SqlStore, run_id: str, event_id: str, key: str, at: datetime) -> None:
    await store.record_dispatch(
        received(event_id), [started(run_id)], [new_run(run_id, dedupe_key=key)], at
    )


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine executes while the test runs."""
    seen: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    yield seen
    event.remove(Engine, "before_cursor_execute", record)


async def test_open_migrates_a_new_database_to_the_declared_schema(store_url: str) -> None:
    """After open, alembic is at head and the tables match tables.py exactly."""
    await (await SqlStore.open(store_url)).close()
    engine = create_async_engine(store_url)

    def differences(connection: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    async with engine.connect() as connection:
        version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        diff = await connection.run_sync(differences)
    await engine.dispose()
    assert version == ScriptDirectory(str(migrations.HERE)).get_current_head()
    assert diff == []


async def test_reopening_an_existing_database_keeps_its_data(store_url: str) -> None:
    """A second open migrates nothing and finds the runs of the first."""
    first = await SqlStore.open(store_url)
    await dispatch(first, "r1", "e1", "k1", T0)
    await first.close()
    second = await SqlStore.open(store_url)
    run = await second.get_run("r1")
    await second.close()
    assert run is not None
    assert run.state == "Pending"


async def test_open_creates_the_sqlite_directory(tmp_path: Path) -> None:
    """The data directory of a SQLite store is created when missing."""
    path = tmp_path / "a" / "b" / "eventflow.db"
    await (await SqlStore.open(f"sqlite+aiosqlite:///{path}")).close()
    assert path.is_file()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "mysql+aiomysql://db/x",
            "store url: driver 'mysql+aiomysql' is not supported; use "
            "sqlite+aiosqlite:///path/eventflow.db or postgresql+asyncpg://user@host/db",
        ),
        (
            "sqlite:///x.db",
            "store url: driver 'sqlite' is not supported; use "
            "sqlite+aiosqlite:///path/eventflow.db or postgresql+asyncpg://user@host/db",
        ),
        (
            "not a url",
            "store url 'not a url' is not a database URL; use "
            "sqlite+aiosqlite:///path/eventflow.db or postgresql+asyncpg://user@host/db",
        ),
        (
            "sqlite+aiosqlite://",
            "store url 'sqlite+aiosqlite://' names no database file; use "
            "sqlite+aiosqlite:///path/eventflow.db or postgresql+asyncpg://user@host/db",
        ),
    ],
)
async def test_open_rejects_an_unsupported_url(url: str, message: str) -> None:
    """A URL of another driver or without a file is a ConfigError naming what works."""
    with pytest.raises(ConfigError) as caught:
        await SqlStore.open(url)
    assert str(caught.value) == message


async def test_open_on_an_unreachable_server_is_a_temporary_error() -> None:
    """No server at the address: TemporaryError naming the store, password hidden."""
    with pytest.raises(TemporaryError) as caught:
        await SqlStore.open("postgresql+asyncpg://u:secret@127.0.0.1:1/x")
    assert str(caught.value).startswith("store postgresql+asyncpg://u:***@127.0.0.1:1/x: ")
    assert str(caught.value).endswith("check that the database is up and reachable")


async def test_ping_answers_on_a_live_database(store: SqlStore) -> None:
    """ping returns quietly when the database answers."""
    await store.ping()


async def test_dispatch_creates_run_with_pending_steps_in_order(store: SqlStore) -> None:
    """A new run is Pending, its steps Pending in the given order, and readable as created."""
    result = await store.record_dispatch(received(), [started("r1")], [new_run("r1")], T0)
    run = await store.get_run("r1")
    assert result.existing == {}
    assert result.created == (run,)
    assert run is not None
    assert (run.trigger, run.workflow, run.event_id, run.dedupe_key) == ("etl", "etl", "e1", "k1")
    assert run.arguments == {"key": "a.csv"}
    assert run.workflow_spec == {"steps": [{"name": "extract"}]}
    assert (run.state, run.reason, run.cancel_requested) == ("Pending", None, False)
    assert (run.created_at, run.started_at, run.finished_at) == (T0, None, None)
    assert run.steps == (
        StepRecord("extract", "Pending"),
        StepRecord("transform", "Pending"),
        StepRecord("load", "Pending"),
    )


async def test_redelivered_event_starts_no_second_run(store: SqlStore) -> None:
    """The same event twice: one run, and the second call names it as existing."""
    first = await store.record_dispatch(received(), [started("r1")], [new_run("r1")], T0)
    second = await store.record_dispatch(received(), [started("r2")], [new_run("r2")], T0)
    assert [run.id for run in first.created] == ["r1"]
    assert second.created == ()
    assert second.existing == {"etl": "r1"}
    assert await store.get_run("r2") is None
    assert [run.id for run in await store.list_runs()] == ["r1"]
    assert len(await store.list_events()) == 1


async def test_same_dedupe_key_from_another_event_reuses_the_run(store: SqlStore) -> None:
    """A second event with the key of a run records a decision pointing at that run."""
    await store.record_dispatch(received("e1"), [started("r1")], [new_run("r1")], T0)
    later = T0 + timedelta(seconds=1)
    result = await store.record_dispatch(
        received("e2", at=later), [started("r2")], [new_run("r2")], later
    )
    assert result.created == ()
    assert result.existing == {"etl": "r1"}
    stored = await store.get_event("e2")
    assert stored is not None
    assert stored.decisions == (Decision("etl", True, None, "r1"),)


async def test_same_key_under_another_trigger_starts_its_own_run(store: SqlStore) -> None:
    """Dedupe keys are per trigger."""
    runs = [new_run("r1", trigger="a"), new_run("r2", trigger="b")]
    result = await store.record_dispatch(received(), [], runs, T0)
    assert [run.id for run in result.created] == ["r1", "r2"]


async def test_concurrent_dispatch_of_one_event_creates_one_run(store_url: str) -> None:
    """Two replicas storing one event at the same moment start exactly one run."""
    replicas = [await SqlStore.open(store_url) for _ in range(2)]
    results = await asyncio.gather(
        *(
            replica.record_dispatch(received(), [started(run)], [new_run(run)], T0)
            for replica, run in zip(replicas, ["r1", "r2"], strict=True)
        )
    )
    runs = await replicas[0].list_runs()
    for replica in replicas:
        await replica.close()
    assert len(runs) == 1
    winner = runs[0].id
    assert sorted(len(result.created) for result in results) == [0, 1]
    assert [result.existing for result in results if not result.created] == [{"etl": winner}]


async def test_event_keeps_document_and_decisions_in_order(store: SqlStore) -> None:
    """The structured CloudEvent and every decision, matched or not, are stored."""
    decisions = [
        Decision("zeta", False, "filter data.size > 0 was false", None),
        started("r1", trigger="alpha"),
    ]
    await store.record_dispatch(received(), decisions, [new_run("r1", trigger="alpha")], T0)
    stored = await store.get_event("e1")
    assert stored is not None
    assert (stored.id, stored.sensor, stored.type, stored.source, stored.subject) == (
        "e1",
        "uploads",
        "object.created",
        "s3://raw",
        None,
    )
    assert stored.received_at == T0
    assert stored.document == received().event.to_dict()
    assert stored.decisions == tuple(decisions)
    assert await store.get_event("missing") is None


async def test_event_document_keeps_big_integers_and_reads_non_string_keys_as_json(
    store: SqlStore,
) -> None:
    """Integers beyond 64 bits stay exact and keys that are not strings become strings, as
    with the standard library's json; an all-zero commit id stays a string."""
    data = {"big": 2**70, "negative": -(2**63) - 1, 7: "seven", "before": "0" * 40}
    event = Event(id="e1", source="s", type="t", data=data)
    await store.record_dispatch(ReceivedEvent(event=event, sensor="s", received_at=T0), [], [], T0)
    stored = await store.get_event("e1")
    assert stored is not None
    assert stored.document["data"] == {
        "big": 2**70,
        "negative": -(2**63) - 1,
        "7": "seven",
        "before": "0" * 40,
    }


async def test_one_event_id_from_two_sensors_is_two_events(store: SqlStore) -> None:
    """Events are keyed by (id, sensor); get_event can pick the sensor."""
    await store.record_dispatch(received(sensor="a"), [], [], T0)
    await store.record_dispatch(received(sensor="b", at=T0 + timedelta(1)), [], [], T0)
    first = await store.get_event("e1")
    chosen = await store.get_event("e1", sensor="b")
    assert first is not None
    assert chosen is not None
    assert (first.sensor, chosen.sensor) == ("a", "b")


async def test_list_events_is_newest_first_and_limited(store: SqlStore) -> None:
    """list_events orders by arrival, newest first, and stops at the limit."""
    for index in range(3):
        at = T0 + timedelta(minutes=index)
        await store.record_dispatch(received(f"e{index}", at=at), [], [], at)
    assert [e.id for e in await store.list_events(limit=2)] == ["e2", "e1"]


async def test_save_steps_upserts_by_name_and_keeps_order(store: SqlStore) -> None:
    """Known steps are replaced in place; a new step goes after the others."""
    await dispatch(store, "r1", "e1", "k1", T0)
    extract = StepRecord(
        "extract",
        "Succeeded",
        attempt=2,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=5),
        exit_code=0,
        outputs={"rows": 3},
        log_tail="done\n",
    )
    cleanup = StepRecord("cleanup", "Running", attempt=1, started_at=T0)
    await store.save_steps("r1", [cleanup, extract])
    run = await store.get_run("r1")
    assert run is not None
    assert run.steps == (
        extract,
        StepRecord("transform", "Pending"),
        StepRecord("load", "Pending"),
        cleanup,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"state": "Done"},
            "steps.a.state: 'Done' is not a step state; use one of ('Pending', 'Running', "
            "'Succeeded', 'Failed', 'Skipped', 'Cancelled', 'TimedOut')",
        ),
        (
            {"state": "Running", "started_at": datetime(2024, 1, 1)},
            "steps.a.started_at: 2024-01-01T00:00:00 has no timezone; pass an aware UTC datetime",
        ),
        (
            {"state": "Failed", "started_at": T0, "finished_at": T0.replace(tzinfo=None)},
            "steps.a.finished_at: 2024-06-01T12:00:00 has no timezone; pass an aware UTC datetime",
        ),
    ],
)
def test_step_record_rejects_unknown_state_and_naive_times(
    fields: dict[str, Any], message: str
) -> None:
    """A StepRecord with a state outside STEP_STATES or a naive time cannot be made."""
    with pytest.raises(ValueError, match=r".*") as caught:
        StepRecord("a", **fields)
    assert str(caught.value) == message


async def test_save_steps_rejects_a_repeated_name(store: SqlStore) -> None:
    """Two records of one step in one call are refused, naming the run and the names."""
    await dispatch(store, "r1", "e1", "k1", T0)
    with pytest.raises(ValueError, match=r".*") as caught:
        await store.save_steps("r1", [StepRecord("a", "Pending"), StepRecord("a", "Running")])
    assert str(caught.value) == "steps of run 'r1': names repeat in ['a', 'a']; give each once"


async def test_writes_to_an_unknown_run_raise_lookup_error(store: SqlStore) -> None:
    """Steps, logs and states of a run that does not exist are refused."""
    writes: list[Callable[[], Awaitable[None]]] = [
        lambda: store.save_steps("nope", [StepRecord("a", "Pending")]),
        lambda: store.save_step_log("nope", "a", 1, "x"),
        lambda: store.set_run_state("nope", "Running", reason=None, now=T0),
    ]
    for write in writes:
        with pytest.raises(LookupError) as caught:
            await write()
        assert str(caught.value) == "run 'nope' does not exist"


async def test_run_state_stamps_start_once_and_finish(store: SqlStore) -> None:
    """started_at is the first Running; finished_at is set by the terminal state."""
    await dispatch(store, "r1", "e1", "k1", T0)
    await store.set_run_state("r1", "Running", reason=None, now=T0 + timedelta(seconds=1))
    await store.set_run_state("r1", "Running", reason="resumed", now=T0 + timedelta(seconds=2))
    await store.set_run_state("r1", "Failed", reason="load failed", now=T0 + timedelta(seconds=3))
    run = await store.get_run("r1")
    assert run is not None
    assert (run.state, run.reason) == ("Failed", "load failed")
    assert run.started_at == T0 + timedelta(seconds=1)
    assert run.finished_at == T0 + timedelta(seconds=3)


async def test_a_finished_run_is_not_changed_again(store: SqlStore) -> None:
    """Once a run has ended, no state, step or log write changes it: each is refused, whole."""
    await dispatch(store, "r1", "e1", "k1", T0)
    await store.set_run_state("r1", "Cancelled", reason="cancelled by request", now=T0)
    before = await store.get_run("r1")
    writes: list[Callable[[], Awaitable[None]]] = [
        lambda: store.set_run_state("r1", "Running", reason=None, now=T0),
        lambda: store.set_run_state("r1", "Succeeded", reason=None, now=T0),
        lambda: store.save_progress(
            "r1",
            steps=[StepRecord("extract", "Running", attempt=1, started_at=T0)],
            logs=[StepLog("extract", 1, "started")],
            run_state=("Running", None),
            now=T0,
        ),
        lambda: store.save_progress(
            "r1", steps=[StepRecord("extract", "Running", attempt=1, started_at=T0)], now=T0
        ),
    ]
    for write in writes:
        with pytest.raises(RunFinishedError) as caught:
            await write()
        assert str(caught.value) == "run 'r1' already finished (Cancelled); it is not changed again"
    assert await store.get_run("r1") == before
    assert await store.get_step_log("r1", "extract", 1) is None


async def test_run_state_rejects_unknown_state_and_naive_time(store: SqlStore) -> None:
    """A state outside RUN_STATES, or a naive now, is refused before any write."""
    with pytest.raises(ValueError, match=r".*") as bad_state:
        await store.set_run_state("r1", "Done", reason=None, now=T0)
    with pytest.raises(ValueError, match=r".*") as naive:
        await store.set_run_state("r1", "Running", reason=None, now=T0.replace(tzinfo=None))
    assert str(bad_state.value) == (
        "state: 'Done' is not a run state; use one of "
        "('Pending', 'Running', 'Succeeded', 'Failed', 'Cancelled')"
    )
    assert str(naive.value) == (
        "now: 2024-06-01T12:00:00 has no timezone; pass an aware UTC datetime"
    )


async def test_request_cancel_flags_the_run(store: SqlStore) -> None:
    """request_cancel sets cancel_requested and answers the run; None for an unknown run."""
    await dispatch(store, "r1", "e1", "k1", T0)
    run = await store.request_cancel("r1")
    assert run is not None
    assert run.cancel_requested is True
    assert run.steps[0] == StepRecord("extract", "Pending")
    assert await store.request_cancel("nope") is None


async def test_step_log_answers_the_latest_attempt_by_default(store: SqlStore) -> None:
    """Logs are kept per attempt; saving an attempt again replaces its text."""
    await dispatch(store, "r1", "e1", "k1", T0)
    await store.save_step_log("r1", "extract", 1, "first")
    await store.save_step_log("r1", "extract", 2, "second")
    await store.save_step_log("r1", "extract", 2, "second, longer")
    assert await store.get_step_log("r1", "extract") == "second, longer"
    assert await store.get_step_log("r1", "extract", 1) == "first"
    assert await store.get_step_log("r1", "extract", 3) is None
    assert await store.get_step_log("r1", "load") is None


async def test_list_runs_filters_orders_and_limits(store: SqlStore) -> None:
    """Newest first; state and trigger filters combine; limit caps the answer."""
    for index, trigger in enumerate(["a", "b", "a", "a"]):
        at = T0 + timedelta(minutes=index)
        run = new_run(f"r{index}", trigger=trigger, dedupe_key=f"k{index}")
        await store.record_dispatch(received(f"e{index}", at=at), [], [run], at)
    await store.set_run_state("r2", "Running", reason=None, now=T0)
    assert [r.id for r in await store.list_runs()] == ["r3", "r2", "r1", "r0"]
    assert [r.id for r in await store.list_runs(limit=2)] == ["r3", "r2"]
    assert [r.id for r in await store.list_runs(trigger="a")] == ["r3", "r2", "r0"]
    assert [r.id for r in await store.list_runs(state="Pending", trigger="a")] == ["r3", "r0"]
    assert await store.list_runs(state="Failed") == []
    with pytest.raises(ValueError, match=r"^limit: 0 is not a positive number of runs$"):
        await store.list_runs(limit=0)


async def test_list_runs_loads_all_steps_in_two_statements(
    store: SqlStore, statements: list[str]
) -> None:
    """Listing many runs costs one query for the runs and one for all their steps."""
    for index in range(5):
        await dispatch(store, f"r{index}", f"e{index}", f"k{index}", T0)
    statements.clear()
    runs = await store.list_runs()
    queries = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 2
    assert [len(run.steps) for run in runs] == [3] * 5


async def test_unfinished_runs_are_pending_or_running_oldest_first(store: SqlStore) -> None:
    """Finished runs are left out; the oldest unfinished run comes first."""
    for index in range(4):
        await dispatch(store, f"r{index}", f"e{index}", f"k{index}", T0 + timedelta(index))
    await store.set_run_state("r1", "Running", reason=None, now=T0)
    await store.set_run_state("r2", "Succeeded", reason=None, now=T0)
    assert [r.id for r in await store.unfinished_runs()] == ["r0", "r1", "r3"]


async def test_count_runs_counts_each_state_of_all_or_one_trigger(store: SqlStore) -> None:
    """Runs are counted per state, over all triggers or one; every state is named."""
    runs = [new_run(f"r{i}", trigger=t, dedupe_key=f"k{i}") for i, t in enumerate("aab")]
    await store.record_dispatch(received(), [], runs, T0)
    for run_id in ("r0", "r2"):
        await store.set_run_state(run_id, "Running", reason=None, now=T0)
    none = dict.fromkeys(("Pending", "Running", "Succeeded", "Failed", "Cancelled"), 0)
    assert await store.count_runs() == none | {"Pending": 1, "Running": 2}
    assert await store.count_runs("a") == none | {"Pending": 1, "Running": 1}
    assert await store.count_runs("c") == none


async def test_times_round_trip_as_utc(store: SqlStore) -> None:
    """A time given in another offset comes back as the same instant, in UTC."""
    paris = timezone(timedelta(hours=2))
    local = datetime(2024, 6, 1, 14, 30, 15, 123456, tzinfo=paris)
    await store.record_dispatch(received(at=local), [], [new_run("r1")], local)
    await store.save_steps("r1", [StepRecord("extract", "Running", attempt=1, started_at=local)])
    run = await store.get_run("r1")
    stored = await store.get_event("e1")
    assert run is not None
    assert stored is not None
    expected = datetime(2024, 6, 1, 12, 30, 15, 123456, tzinfo=UTC)
    for value in (run.created_at, run.steps[0].started_at, stored.received_at):
        assert value == expected
        assert value is not None
        assert value.tzinfo is UTC


async def test_concurrent_writes_of_one_store_all_land(store: SqlStore) -> None:
    """Many writes started at once on one store each commit, none lost or failed."""
    runs = [new_run(f"r{i}", dedupe_key=f"k{i}") for i in range(10)]
    await store.record_dispatch(received(), [], runs, T0)
    await asyncio.gather(
        *(
            store.save_progress(
                f"r{i}",
                steps=[StepRecord("extract", "Succeeded", 1, T0, T0, 0)],
                logs=[StepLog("extract", 1, f"log {i}")],
                run_state=("Running", None),
                now=T0,
            )
            for i in range(10)
        )
    )
    for index in range(10):
        run = await store.get_run(f"r{index}")
        assert run is not None
        assert (run.state, run.started_at) == ("Running", T0)
        assert run.steps[0] == StepRecord("extract", "Succeeded", 1, T0, T0, 0)
        assert await store.get_step_log(f"r{index}", "extract") == f"log {index}"


async def test_save_progress_stores_steps_logs_and_state_together(store: SqlStore) -> None:
    """One save_progress call leaves the steps, the log and the run state all stored."""
    await dispatch(store, "r1", "e1", "k1", T0)
    done = T0 + timedelta(seconds=4)
    await store.save_progress(
        "r1",
        steps=[StepRecord("extract", "Failed", 1, T0, done, 3, "exit 3")],
        logs=[StepLog("extract", 1, "boom"), StepLog("extract", 2, "again")],
        run_state=("Failed", "extract failed"),
        now=done,
    )
    run = await store.get_run("r1")
    assert run is not None
    assert (run.state, run.reason, run.finished_at) == ("Failed", "extract failed", done)
    assert run.steps[0] == StepRecord("extract", "Failed", 1, T0, done, 3, "exit 3")
    assert await store.get_step_log("r1", "extract", 1) == "boom"
    assert await store.get_step_log("r1", "extract") == "again"


async def test_save_progress_of_an_unknown_run_raises_lookup_error(store: SqlStore) -> None:
    """Whatever save_progress carries, a run that does not exist is refused by name."""
    calls: list[dict[str, Any]] = [
        {},
        {"steps": [StepRecord("a", "Running", 1, T0)]},
        {"logs": [StepLog("a", 1, "x")]},
        {"run_state": ("Running", None)},
    ]
    for fields in calls:
        with pytest.raises(LookupError) as caught:
            await store.save_progress("nope", now=T0, **fields)
        assert str(caught.value) == "run 'nope' does not exist"


async def test_a_failing_item_rolls_back_the_whole_batch(store: SqlStore) -> None:
    """record_dispatches is one transaction: a bad second event leaves nothing of the first,
    and the store keeps working after the failure."""
    good = (received("e1"), [started("r1")], [new_run("r1")])
    naive = received("e2", at=T0.replace(tzinfo=None))
    bad = (naive, [started("r2")], [new_run("r2", dedupe_key="k2")])
    with pytest.raises(ValueError, match=r".*") as caught:
        await store.record_dispatches([good, bad], T0)
    assert str(caught.value) == (
        "event.received_at: 2024-06-01T12:00:00 has no timezone; pass an aware UTC datetime"
    )
    assert await store.list_events() == []
    assert await store.get_run("r1") is None
    [result] = await store.record_dispatches([good], T0)
    assert [run.id for run in result.created] == ["r1"]


async def test_sqlite_reads_answer_while_a_write_waits_for_the_lock(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock makes a write wait (not fail) while reads
    still answer; the write lands once the lock is released."""
    path = tmp_path / "eventflow.db"
    store = await SqlStore.open(f"sqlite+aiosqlite:///{path}")
    await dispatch(store, "r1", "e1", "k1", T0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.create_task(store.set_run_state("r1", "Running", reason=None, now=T0))
        run = await asyncio.wait_for(store.get_run("r1"), timeout=5)
        assert run is not None
        assert run.state == "Pending"
        assert not write.done()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(write, timeout=5)
    run = await store.get_run("r1")
    await store.close()
    assert run is not None
    assert run.state == "Running"


async def test_close_stops_the_sqlite_store_threads(tmp_path: Path) -> None:
    """After close, none of the store's writer or reader threads is left running."""
    before = set(threading.enumerate())
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'eventflow.db'}")
    await dispatch(store, "r1", "e1", "k1", T0)
    await asyncio.gather(store.get_run("r1"), store.list_runs(), store.ping())
    started_threads = {t.name for t in set(threading.enumerate()) - before}
    await store.close()
    left = {t.name for t in set(threading.enumerate()) - before}
    assert {name.rsplit("_", 1)[0] for name in started_threads if "store" in name} == {
        "eventflow-store-writer",
        "eventflow-store-reader",
    }
    assert {name for name in left if "store" in name} == set()
