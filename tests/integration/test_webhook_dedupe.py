"""Redelivery dedupe and the rate limit in the webhook sensor, on the real intake and the real
in-memory bus: what is published, what is remembered, and when."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventflow.bus.memory import MemoryBus
from eventflow.events import Event
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest
from eventflow.sensing.state import MemorySensorState
from sensors.webhook import WebhookSensor
from sensors.webhook.config import WebhookConfig
from sensors.webhook.deduplicating import SPACE, DeliveryLedger
from tests.integration.test_webhook_sensor import on_bus

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SENTINEL = Event(id="sentinel", source="/test", type="test.sentinel")
BATCH = {"content-type": "application/cloudevents-batch+json"}


class Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class BrokenState(MemorySensorState):
    """A sensor state whose store is down: every read and write fails."""

    async def get_many(self, space: str, keys: Sequence[str]) -> dict[str, str]:
        raise ConnectionError("store unreachable")

    async def put_many(
        self, space: str, items: Mapping[str, str], *, expires_at: datetime | None = None
    ) -> None:
        raise ConnectionError("store unreachable")


@pytest.fixture
def emit(bus: MemoryBus) -> Emit:
    return make_emit("hooks", bus, lambda: NOW)


def sensor(
    state: MemorySensorState | None = None, clock: Clock | None = None, **spec: Any
) -> WebhookSensor:
    config = WebhookConfig.model_validate({"path": "hooks", **spec})
    clock = clock or Clock()
    return WebhookSensor("hooks", config, clock=clock, state=state or MemorySensorState(clock))


def keyed(delivery: str, body: dict[str, Any] | None = None) -> HttpRequest:
    headers = {"content-type": "application/json", "x-delivery": delivery}
    return HttpRequest("POST", "hooks", headers, {}, json.dumps(body or {}).encode())


def batch(*ids: str) -> HttpRequest:
    documents = [{"specversion": "1.0", "id": n, "source": "/s", "type": "t"} for n in ids]
    return HttpRequest("POST", "hooks", BATCH, {}, json.dumps(documents).encode())


DELIVERY_ID = {"dedupe": {"deliveryId": "{{ headers['x-delivery'] }}", "window": "1h"}}


async def published(bus: MemoryBus, emit: Emit) -> list[str]:
    """The ids on the bus before a sentinel sent now, in order."""
    await emit(SENTINEL)
    ids: list[str] = []
    while not ids or ids[-1] != "sentinel":
        ids.extend(received.id for received in await on_bus(bus, 1))
    return ids[:-1]


async def test_concurrent_copies_of_a_delivery_publish_it_once(bus: MemoryBus, emit: Emit) -> None:
    """Five copies at once: one 202, four 200 duplicates with the same id, one event."""
    hooks = sensor(**DELIVERY_ID)
    replies = await asyncio.gather(*(hooks.handle(keyed("d-1"), emit) for _ in range(5)))
    assert sorted(reply.status for reply in replies) == [200, 200, 200, 200, 202]
    assert {reply.body["id"] for reply in replies} == {"d-1"}
    assert await published(bus, emit) == ["d-1"]


async def test_a_delivery_id_is_remembered_for_the_window_then_forgotten(
    bus: MemoryBus, emit: Emit
) -> None:
    """Within 1h: duplicate; after it: published again as a new delivery."""
    clock = Clock()
    state = MemorySensorState(clock)
    hooks = sensor(state, clock, **DELIVERY_ID)
    assert (await hooks.handle(keyed("d-1"), emit)).status == 202
    clock.now = NOW + timedelta(minutes=59)
    assert await hooks.handle(keyed("d-1"), emit) == HttpReply(
        200, {"id": "d-1", "duplicate": True}
    )
    clock.now = NOW + timedelta(hours=1, seconds=1)
    assert (await hooks.handle(keyed("d-1"), emit)).status == 202
    assert await published(bus, emit) == ["d-1", "d-1"]


async def test_the_seen_entry_holds_the_first_event_id_when_ids_are_new_each_time(
    bus: MemoryBus, emit: Emit
) -> None:
    """With an id template over the body, a redelivery answers the first event's id."""
    hooks = sensor(event={"id": "{{ body.attempt }}"}, **DELIVERY_ID)
    assert (await hooks.handle(keyed("d-1", {"attempt": "a-1"}), emit)).body == {"id": "a-1"}
    again = await hooks.handle(keyed("d-1", {"attempt": "a-2"}), emit)
    assert again == HttpReply(200, {"id": "a-1", "duplicate": True})
    assert await published(bus, emit) == ["a-1"]


async def test_a_batch_publishes_only_what_was_not_seen_and_lists_the_rest(
    bus: MemoryBus, emit: Emit
) -> None:
    """[e1, e2] then [e2, e3, e3]: 202 with every id, duplicates named; all seen: 200."""
    hooks = sensor()
    assert await hooks.handle(batch("e1", "e2"), emit) == HttpReply(202, {"ids": ["e1", "e2"]})
    assert await hooks.handle(batch("e2", "e3", "e3"), emit) == HttpReply(
        202, {"ids": ["e2", "e3", "e3"], "duplicates": ["e2", "e3"]}
    )
    assert await hooks.handle(batch("e1", "e3"), emit) == HttpReply(
        200, {"ids": ["e1", "e3"], "duplicate": True}
    )
    assert await published(bus, emit) == ["e1", "e2", "e3"]


async def test_what_went_out_before_a_full_bus_stays_deduplicated_on_the_retry() -> None:
    """503 after e1 of [e1, e2]; the sender's retry publishes e2 only."""
    bus = MemoryBus(max_pending=1)
    await bus.start()
    emit = make_emit("hooks", bus, lambda: NOW)
    hooks = sensor()
    assert (await hooks.handle(batch("e1", "e2"), emit)).status == 503
    assert [received.id for received in await on_bus(bus, 1)] == ["e1"]
    retry = await hooks.handle(batch("e1", "e2"), emit)
    assert retry == HttpReply(202, {"ids": ["e1", "e2"], "duplicates": ["e1"]})
    assert [received.id for received in await on_bus(bus, 1)] == ["e2"]
    await bus.close()


async def test_an_unreachable_state_still_takes_the_delivery(bus: MemoryBus, emit: Emit) -> None:
    """The store down: dedupe cannot help, but the event is kept and answered 202."""
    hooks = sensor(BrokenState(), **DELIVERY_ID)
    assert await hooks.handle(keyed("d-1"), emit) == HttpReply(202, {"id": "d-1"})
    assert await published(bus, emit) == ["d-1"]


async def test_over_the_rate_limit_is_429_with_retry_after_and_nothing_published(
    bus: MemoryBus, emit: Emit
) -> None:
    """burst 2 at 1/s: two pass, the third waits a second, and passes a second later."""
    clock = Clock()
    hooks = sensor(clock=clock, rateLimit={"perSecond": 1, "burst": 2})
    assert [(await hooks.handle(keyed(f"r{n}"), emit)).status for n in range(2)] == [202, 202]
    refused = await hooks.handle(keyed("r2"), emit)
    assert (refused.status, refused.headers) == (429, {"Retry-After": "1"})
    assert len(await published(bus, emit)) == 2
    clock.now = NOW + timedelta(seconds=1)
    assert (await hooks.handle(keyed("r3"), emit)).status == 202


class CountingState(MemorySensorState):
    """A memory state that counts its reads and writes."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.reads: list[list[str]] = []
        self.writes: list[tuple[dict[str, str], datetime | None]] = []

    async def get_many(self, space: str, keys: Sequence[str]) -> dict[str, str]:
        self.reads.append(list(keys))
        return await super().get_many(space, keys)

    async def put_many(
        self, space: str, items: Mapping[str, str], *, expires_at: datetime | None = None
    ) -> None:
        self.writes.append((dict(items), expires_at))
        await super().put_many(space, items, expires_at=expires_at)


async def test_many_requests_share_one_read_and_one_write_of_the_state() -> None:
    """Keys recorded together are one put_many (the latest expiry), then read back as seen."""
    clock = Clock()
    state = CountingState(clock)
    ledger = DeliveryLedger("hooks", state, window_seconds=60)

    async def seen(*keys: str) -> dict[str, str]:
        async with ledger.holding(keys, NOW) as found:
            return found

    assert await asyncio.gather(*(seen(f"k{n}") for n in range(3))) == [{}, {}, {}]
    assert len(state.reads) == 1
    ledger.record({"k0": "e0"}, NOW)
    ledger.record({"k1": "e1"}, NOW + timedelta(seconds=1))
    assert await seen("k0", "k1") == {"k0": "e0", "k1": "e1"}
    assert len(state.reads) == 1  # answered from memory while the write is pending
    await ledger.flush()
    assert state.writes == [({"k0": "e0", "k1": "e1"}, NOW + timedelta(seconds=61))]
    assert await state.get_many(SPACE, ["k0", "k1"]) == {"k0": "e0", "k1": "e1"}


class PurgeCountingState(MemorySensorState):
    """A memory state that tells when it was purged."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.purged = asyncio.Event()

    async def purge_expired(self, now: datetime) -> int:
        count = await super().purge_expired(now)
        self.purged.set()
        return count


async def test_run_purges_expired_delivery_ids_until_cancelled(emit: Emit) -> None:
    """The sensor's run drops the ids whose window has passed and keeps the others."""
    clock = Clock()
    state = PurgeCountingState(clock)
    await state.put_many(SPACE, {"old": "e"}, expires_at=NOW - timedelta(seconds=1))
    await state.put_many(SPACE, {"new": "e"}, expires_at=NOW + timedelta(hours=1))
    task = asyncio.create_task(sensor(state, clock).run(emit))
    async with asyncio.timeout(2):
        await state.purged.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.now = NOW - timedelta(days=1)  # an expired entry not purged would read as present
    assert await state.scan(SPACE) == [("new", "e")]


async def test_copies_take_a_key_in_their_order_and_a_cancelled_one_passes_it_on() -> None:
    """Four copies of a key: the first holds it, the second is cancelled while it waits (or
    just as the key is handed to it), the third and fourth take it in turn; none is lost."""
    ledger = DeliveryLedger("hooks", MemorySensorState(Clock()), window_seconds=60)
    order: list[str] = []
    release_first = asyncio.Event()

    async def copy(name: str, hold_until: asyncio.Event | None = None) -> None:
        async with ledger.holding(["d"], NOW):
            order.append(name)
            if hold_until is not None:
                await hold_until.wait()

    first = asyncio.create_task(copy("first", release_first))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(copy("second"))
    third = asyncio.create_task(copy("third"))
    fourth = asyncio.create_task(copy("fourth"))
    await asyncio.sleep(0.01)
    assert order == ["first"]
    second.cancel()
    release_first.set()
    async with asyncio.timeout(2):
        await asyncio.gather(first, third, fourth)
    assert second.cancelled()
    assert order == ["first", "third", "fourth"]
    assert ledger._held == {}  # every key freed once its last copy left


async def test_a_waiter_cancelled_as_the_key_is_handed_to_it_passes_it_on() -> None:
    """The holder leaves and cancels the next copy in the same step, so that copy is handed
    the key but cancelled before it runs: the key goes on to the copy after it."""
    ledger = DeliveryLedger("hooks", MemorySensorState(Clock()), window_seconds=60)
    entered: list[str] = []
    leave = asyncio.Event()
    waiters: list[asyncio.Task[None]] = []

    async def holder() -> None:
        async with ledger.holding(["d"], NOW):
            entered.append("holder")
            await leave.wait()
        waiters[0].cancel()  # no await since the release: the key was handed to it already

    async def copy(name: str) -> None:
        async with ledger.holding(["d"], NOW):
            entered.append(name)

    holding = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    waiters.extend(asyncio.create_task(copy(name)) for name in ("handed", "after"))
    await asyncio.sleep(0.01)
    leave.set()
    async with asyncio.timeout(2):
        await asyncio.gather(holding, waiters[1])
    assert waiters[0].cancelled()
    assert entered == ["holder", "after"]
    assert ledger._held == {}


async def test_requests_holding_overlapping_keys_do_not_deadlock() -> None:
    """Keys taken in one order whatever order a request names them in: requests naming the
    same keys the other way round all finish, each holding all of its keys at once."""
    ledger = DeliveryLedger("hooks", MemorySensorState(Clock()), window_seconds=60)
    holding: set[str] = set()

    async def hold(keys: list[str]) -> None:
        async with ledger.holding(keys, NOW):
            assert not holding & set(keys)
            holding.update(keys)
            await asyncio.sleep(0)
            holding.difference_update(keys)

    requests = [["a", "b", "c"], ["c", "b", "a"], ["b", "a"], ["c", "a"], ["a", "a", "b"]] * 20
    async with asyncio.timeout(5):
        await asyncio.gather(*(hold(keys) for keys in requests))
    assert ledger._held == {}
