"""The sensor state contract, on memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventflow.events import ReceivedEvent
from eventflow.sensing.limiting import ProcessRateLimits
from eventflow.sensing.protocol import SensorState, SpaceWrite
from eventflow.sensing.state import MemorySensorState
from eventflow.store.sql import SqlStore
from eventflow.workers.channel import MainEnd, WorkerEnd
from eventflow.workers.store import ChannelSensorState, serve_store
from tests.integration.conftest import empty_database

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "postgres", "intake-worker"])
async def state(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    clock: Clock,
) -> AsyncIterator[SensorState]:
    if request.param == "memory":
        yield MemorySensorState(clock)
        return
    database = "sqlite" if request.param == "intake-worker" else request.param
    async with empty_database(database, tmp_path) as url:
        store = await SqlStore.open(url)
        try:
            if request.param == "intake-worker":
                async with through_the_main_process(store, clock, tmp_path_factory) as state:
                    yield state
            else:
                yield store.sensor_state("uploads", clock)
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def through_the_main_process(
    store: SqlStore, clock: Clock, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SensorState]:
    """An intake worker's state: every call sent over the channel to the store's state."""

    async def refuse(_: ReceivedEvent) -> None:
        raise AssertionError("nothing is published here")

    # A Unix socket's path must be short: pytest's tmp_path may be too long.
    path = tmp_path_factory.mktemp("st") / "c.sock"
    main = MainEnd(
        path,
        refuse,
        serve_store(
            lambda name: store.sensor_state(name, clock),
            lambda: store.webhooks,
            ProcessRateLimits(),
        ),
    )
    await main.start()
    worker = WorkerEnd(path, reload=lambda: asyncio.sleep(0, []))
    await worker.connect()
    try:
        yield ChannelSensorState("uploads", worker.ask_store)
    finally:
        await worker.close()
        await main.close()


async def test_put_then_get_returns_the_value_and_a_missing_key_none(state: SensorState) -> None:
    """A stored value reads back; a key never stored reads as None."""
    await state.put_many("seen", {"a": "1", "b": "2"})
    assert await state.get("seen", "a") == "1"
    assert await state.get("seen", "zzz") is None
    assert await state.get_many("seen", ["a", "b", "c"]) == {"a": "1", "b": "2"}


async def test_spaces_keep_their_keys_apart(state: SensorState) -> None:
    """The same key in two spaces holds two values."""
    await state.put_many("listing", {"k": "listed"})
    await state.put_many("seen", {"k": "seen"})
    assert await state.get("listing", "k") == "listed"
    assert await state.get("seen", "k") == "seen"


async def test_put_replaces_the_value_and_its_expiry(state: SensorState, clock: Clock) -> None:
    """A second put of a key overwrites its value, and an expiry can be lifted."""
    await state.put_many("seen", {"k": "old"}, expires_at=START + timedelta(seconds=10))
    await state.put_many("seen", {"k": "new"})
    clock.now = START + timedelta(days=1)
    assert await state.get("seen", "k") == "new"


async def test_expired_entries_read_as_absent_and_purge_deletes_them(
    state: SensorState, clock: Clock
) -> None:
    """Past expires_at an entry is gone from get and scan; purge removes it for good."""
    await state.put_many("seen", {"short": "1"}, expires_at=START + timedelta(seconds=10))
    await state.put_many("seen", {"long": "2"}, expires_at=START + timedelta(hours=1))
    clock.now = START + timedelta(seconds=10)
    assert await state.get("seen", "short") is None
    assert await state.scan("seen") == [("long", "2")]
    assert await state.purge_expired(clock.now) == 1
    clock.now = START
    assert await state.get("seen", "short") is None
    assert await state.get("seen", "long") == "2"


async def test_delete_removes_only_the_named_keys(state: SensorState) -> None:
    """delete_many drops the keys given, in that space only."""
    await state.put_many("seen", {"a": "1", "b": "2"})
    await state.put_many("other", {"a": "3"})
    await state.delete_many("seen", ["a", "missing"])
    assert await state.get_many("seen", ["a", "b"]) == {"b": "2"}
    assert await state.get("other", "a") == "3"


AWKWARD_KEYS = [
    "in/a b+c.csv",
    "in/a%2Fb.csv",
    "in/Z.csv",
    "in/a.csv",
    "in/é.csv",
    "in/日本.csv",
    "in/😀.csv",
    "in/\U0010ffff.csv",
    "in-other/x.csv",
    "in",
    "out/x.csv",
]


async def test_scan_pages_in_utf8_byte_order_within_a_prefix(state: SensorState) -> None:
    """scan lists keys with the prefix in UTF-8 byte order (S3's), page by page with `after`."""
    await state.put_many("listing", {key: key.upper() for key in AWKWARD_KEYS})
    expected = sorted((key for key in AWKWARD_KEYS if key.startswith("in/")), key=str.encode)
    pages: list[str] = []
    after: str | None = None
    while page := await state.scan("listing", prefix="in/", after=after, limit=3):
        assert len(page) <= 3
        pages += [key for key, _ in page]
        after = page[-1][0]
    assert pages == expected
    everything = await state.scan("listing", limit=100)
    assert [key for key, _ in everything] == sorted(AWKWARD_KEYS, key=str.encode)
    assert dict(everything)["in/a b+c.csv"] == "IN/A B+C.CSV"


async def test_many_keys_at_once_are_stored_and_read(state: SensorState) -> None:
    """Thousands of keys in one call go through (split under the bound-parameter limit)."""
    items = {f"obj/{number:05}": str(number) for number in range(2_500)}
    await state.put_many("listing", items)
    assert await state.get_many("listing", list(items)) == items
    await state.delete_many("listing", list(items)[:2_000])
    assert len(await state.scan("listing", limit=5_000)) == 500


async def test_reads_of_every_size_find_exactly_the_stored_keys(state: SensorState) -> None:
    """Lists of keys of each size up to past a chunk (a lookup's list is padded to a power of
    two with its first key): each stored key found once, the missing ones not at all."""
    await state.put_many("seen", {f"k{number}": str(number) for number in range(0, 600, 2)})
    for size in [*range(1, 70), 127, 128, 129, 499, 500, 501, 600]:
        keys = [f"k{number}" for number in range(size)]
        expected = {key: key[1:] for key in keys if int(key[1:]) % 2 == 0}
        assert await state.get_many("seen", keys) == expected, size


async def test_bad_arguments_are_refused_with_what_to_pass(state: SensorState) -> None:
    """An empty space name and a non-positive limit are errors that say what is expected."""
    with pytest.raises(ValueError, match=r"^space: an empty name; name the use of the state"):
        await state.put_many("", {"a": "1"})
    with pytest.raises(ValueError, match=r"^limit: 0 is not a positive number of entries$"):
        await state.scan("seen", limit=0)


async def test_several_spaces_are_read_and_written_in_one_call(
    state: SensorState, clock: Clock
) -> None:
    """write_spaces puts and deletes in several spaces, each with its expiry; read_spaces
    returns every space asked for, with only its live keys."""
    await state.put_many("listing", {"old": "x", "kept": "y"})
    await state.write_spaces(
        [
            SpaceWrite("seen", {"a": "1", "b": "2"}, START + timedelta(seconds=10)),
            SpaceWrite("newest", {"k": "0A"}),
            SpaceWrite("listing", {"new": "z"}, delete=["old", "never-there"]),
        ]
    )
    clock.now = START + timedelta(seconds=5)
    assert await state.read_spaces(
        {"seen": ["a", "b", "c"], "newest": ["k"], "listing": ["old", "kept", "new"], "none": []}
    ) == {
        "seen": {"a": "1", "b": "2"},
        "newest": {"k": "0A"},
        "listing": {"kept": "y", "new": "z"},
        "none": {},
    }
    clock.now = START + timedelta(seconds=10)
    assert await state.read_spaces({"seen": ["a", "b"], "newest": ["k"]}) == {
        "seen": {},
        "newest": {"k": "0A"},
    }


async def test_a_refused_write_of_several_spaces_leaves_none_of_them_written(
    state: SensorState,
) -> None:
    """One bad space name refuses the whole write_spaces call: the other spaces stay as they were."""
    with pytest.raises(ValueError, match=r"^space: an empty name; name the use of the state"):
        await state.write_spaces([SpaceWrite("seen", {"a": "1"}), SpaceWrite("", {"b": "2"})])
    assert await state.read_spaces({"seen": ["a"], "newest": ["b"]}) == {"seen": {}, "newest": {}}
    with pytest.raises(ValueError, match=r"^space: an empty name; name the use of the state"):
        await state.read_spaces({"seen": ["a"], "": ["b"]})


async def test_thousands_of_keys_in_several_spaces_go_through_one_call(
    state: SensorState,
) -> None:
    """Large write_spaces/read_spaces calls are split under the bound-parameter limit."""
    seen = {f"seen/{number:05}": "1" for number in range(1_200)}
    listing = {f"obj/{number:05}": str(number) for number in range(1_300)}
    await state.write_spaces([SpaceWrite("seen", seen), SpaceWrite("listing", listing)])
    await state.write_spaces([SpaceWrite("listing", delete=list(listing)[:1_000])])
    found = await state.read_spaces({"seen": list(seen), "listing": list(listing)})
    assert found["seen"] == seen
    assert found["listing"] == dict(list(listing.items())[1_000:])
