"""Reporting changes once each and newest last, and who may be asked to confirm SNS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.protocol import SpaceWrite
from eventflow.sensing.state import MemorySensorState
from sensors.objectstore.config import ObjectStoreConfig
from sensors.objectstore.normalizing import ObjectChange
from sensors.objectstore.pushing import host_allowed
from sensors.objectstore.reporting import NEWEST, SEEN, Reporter

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def change(key: str = "k", sequencer: str | None = "0A", request: str = "R1") -> ObjectChange:
    return ObjectChange(
        bucket="raw-data",
        key=key,
        event_name="ObjectCreated:Put",
        size=1,
        etag="e",
        version_id=None,
        sequencer=sequencer,
        region="eu-west-1",
        time=START,
        request_id=request,
        host_id=None,
        raw={"k": key, "s": sequencer},
    )


def reporter(clock: Clock, **fields: Any) -> tuple[Reporter, MemorySensorState, list[Event]]:
    state = MemorySensorState(clock)
    config = ObjectStoreConfig.model_validate({"mode": "poll", "bucket": "raw-data", **fields})
    return Reporter("s", config, state, clock), state, []


def collector(events: list[Event]) -> Any:
    async def emit(event: Event) -> ReceivedEvent:
        events.append(event)
        return ReceivedEvent(event, "s", START)

    return emit


async def test_a_repeated_record_is_dropped_until_the_window_ends() -> None:
    """Within dedupe.windowSeconds a record is reported once; after it, again."""
    clock = Clock()
    report, _, events = reporter(clock, dedupe={"windowSeconds": 60})
    emit = collector(events)
    assert len(await report.report([change()], emit)) == 1
    assert await report.report([change()], emit) == []
    clock.now += timedelta(seconds=61)
    assert len(await report.report([change()], emit)) == 1
    assert (report.counts.emitted, report.counts.duplicates) == (2, 1)


async def test_within_one_message_the_older_change_of_a_key_is_dropped() -> None:
    """Records 0B then 0A of one key in one message: 0B only; other keys are not compared."""
    report, state, events = reporter(Clock())
    await report.report(
        [change(sequencer="0B", request="R2"), change(sequencer="0A"), change("j", "01")],
        collector(events),
    )
    assert [(e.subject, e.data["sequencer"]) for e in events] == [("k", "0B"), ("j", "01")]
    assert await state.get(NEWEST, "raw-data/k") == "0B"
    assert report.counts.stale == 1


async def test_state_is_written_only_after_the_bus_took_the_events() -> None:
    """A bus failure leaves no seen entry, so the redelivered message is reported again."""
    report, state, _ = reporter(Clock())

    async def refuse(event: Event) -> ReceivedEvent:
        raise RuntimeError("bus down")

    with pytest.raises(RuntimeError):
        await report.report([change()], refuse)
    assert await state.scan(SEEN) == []
    assert await state.scan(NEWEST) == []


class CountingState(MemorySensorState):
    """Memory state that counts its round trips: reads and write transactions."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.reads = self.writes = 0

    async def read_spaces(self, keys: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        self.reads += 1
        return await super().read_spaces(keys)

    async def write_spaces(self, writes: Sequence[SpaceWrite]) -> None:
        self.writes += 1
        await super().write_spaces(writes)


async def test_a_batch_costs_one_state_read_and_one_write_whatever_its_size() -> None:
    """Thirty records of ten keys: one read of both spaces, one write of both, the caller's
    own entries in that same write."""
    clock = Clock()
    state = CountingState(clock)
    config = ObjectStoreConfig.model_validate({"mode": "poll", "bucket": "raw-data"})
    report = Reporter("s", config, state, clock)
    events: list[Event] = []
    batch = [change(f"k{index % 10}", f"{index:04X}", f"R{index}") for index in range(30)]
    ids = await report.report(batch, collector(events), also=[SpaceWrite("listing", {"x": "1"})])
    assert (len(ids), state.reads, state.writes) == (30, 1, 1)
    assert await state.get(NEWEST, "raw-data/k3") == f"{23:04X}"
    assert await state.get("listing", "x") == "1"


async def test_a_crash_before_the_state_write_reports_the_batch_again() -> None:
    """The bus took the events but the state write failed: the redelivered batch is emitted
    again (at-least-once), and after a good write it is dropped as seen."""

    class FailingOnce(MemorySensorState):
        failed = False

        async def write_spaces(self, writes: Sequence[SpaceWrite]) -> None:
            if not self.failed:
                self.failed = True
                raise RuntimeError("store down")
            await super().write_spaces(writes)

    clock = Clock()
    config = ObjectStoreConfig.model_validate({"mode": "poll", "bucket": "raw-data"})
    report = Reporter("s", config, FailingOnce(clock), clock)
    events: list[Event] = []
    batch = [change("a", "01", "R1"), change("b", "02", "R2")]
    with pytest.raises(RuntimeError, match="store down"):
        await report.report(batch, collector(events))
    assert len(await report.report(batch, collector(events))) == 2
    assert await report.report(batch, collector(events)) == []
    assert [event.subject for event in events] == ["a", "b", "a", "b"]


async def test_filtered_changes_are_counted_and_not_emitted() -> None:
    """A change the filters exclude is neither emitted nor remembered."""
    report, state, events = reporter(Clock(), suffix=".csv")
    assert await report.report([change("a.json")], collector(events)) == []
    assert (events, report.counts.filtered, await state.scan(SEEN)) == ([], 1, [])


@pytest.mark.parametrize(
    ("url", "patterns", "allow_http", "refusal"),
    [
        ("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription", None, False, None),
        ("https://sns.cn-north-1.amazonaws.com.cn/?T=1", None, False, None),
        (
            "http://sns.eu-west-1.amazonaws.com/",
            None,
            False,
            "SubscribeURL 'http://sns.eu-west-1.amazonaws.com/': scheme 'http' is not https",
        ),
        (
            "https://sns.eu-west-1.amazonaws.com.evil.example/",
            None,
            False,
            "SubscribeURL 'https://sns.eu-west-1.amazonaws.com.evil.example/': host"
            " 'sns.eu-west-1.amazonaws.com.evil.example' is not in push.snsHosts"
            " (sns.*.amazonaws.com, sns.*.amazonaws.com.cn)",
        ),
        (
            "https://sns.eu-west-1.amazonaws.com:8443/",
            None,
            False,
            "SubscribeURL 'https://sns.eu-west-1.amazonaws.com:8443/': host"
            " 'sns.eu-west-1.amazonaws.com:8443' is not in push.snsHosts"
            " (sns.*.amazonaws.com, sns.*.amazonaws.com.cn)",
        ),
        ("http://127.0.0.1:8080/c", ["127.0.0.1:8080"], True, None),
        (
            "https://user@evil.example/@sns.eu-west-1.amazonaws.com",
            None,
            False,
            "SubscribeURL 'https://user@evil.example/@sns.eu-west-1.amazonaws.com': host"
            " 'evil.example' is not in push.snsHosts (sns.*.amazonaws.com, sns.*.amazonaws.com.cn)",
        ),
    ],
)
def test_only_allowed_hosts_may_be_asked_to_confirm_a_subscription(
    url: str, patterns: list[str] | None, allow_http: bool, refusal: str | None
) -> None:
    """https on an SNS host by default; ports, look-alike suffixes and userinfo tricks fail."""
    hosts = patterns or ["sns.*.amazonaws.com", "sns.*.amazonaws.com.cn"]
    assert host_allowed(url, hosts, allow_http=allow_http) == refusal
