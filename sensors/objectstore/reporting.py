"""Put object changes on the bus once each, newest last: the part every mode shares.

`Reporter.report` takes the changes one notification carried, keeps those the filters admit,
drops a record already reported (the "seen" space, for `dedupe.windowSeconds`) and a change of
a key older than one already reported (the "newest" space: the largest sequencer per key),
emits the rest in order, and only then writes both spaces (promise 1: state after the bus).
A batch costs one state read and one write transaction, whatever its size; the caller's own
state for the batch (the poll's checkpoint) rides in that transaction. A crash in between
reports again with the same event ids, which the engine's run dedupe absorbs. `Health` is
what /readyz shows. This module does not receive, list or decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog

from eventflow.events import JSON_CONTENT_TYPE, Event
from eventflow.sensing.protocol import Emit, SensorState, SpaceWrite
from sensors.objectstore.config import NotificationFilters
from sensors.objectstore.filtering import admits, is_older, newest_key, seen_key
from sensors.objectstore.listing import LISTING, noted
from sensors.objectstore.normalizing import ObjectChange, decode_message, to_event

log = structlog.get_logger()

POISON_TYPE = "eventflow.objectstore.poison"
SEEN = "seen"
NEWEST = "newest"
PURGE_EVERY = timedelta(minutes=10)

# The sensor's whole config (the poll and sqs modes read their own blocks from it), or only
# the filters, for a stream sensor's `s3` block.
C = TypeVar("C", bound=NotificationFilters)


@dataclass
class Health:
    """The sensor's connection to its store or queue, as /readyz shows it."""

    connected: bool = False
    problem: str | None = None

    def up(self) -> None:
        self.connected, self.problem = True, None

    def down(self, problem: str) -> None:
        self.connected, self.problem = False, problem


@dataclass
class Counts:
    """What the sensor did with what it heard, since it started."""

    emitted: int = 0
    filtered: int = 0
    duplicates: int = 0
    stale: int = 0
    poisoned: int = 0
    rejected: int = 0
    skipped: int = 0  # s3:TestEvent

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Reporter(Generic[C]):
    name: str
    config: C
    state: SensorState
    clock: Callable[[], datetime]
    counts: Counts = field(default_factory=Counts)
    purged_at: datetime | None = None
    # The sqs mode with a reconcile listing: what is emitted also updates the listing's
    # checkpoint, so the listing does not report a change again.
    keeps_listing: bool = False

    async def report_message(self, body: str | bytes, emit: Emit) -> list[str]:
        """Decode one notification message and report its changes; raise DecodeError when
        no decoder understands it (the caller's poison handling takes it then)."""
        changes = decode_message(body, key_encoding=self.config.keyEncoding)
        if not changes:
            self.counts.skipped += 1  # an s3:TestEvent
            return []
        return await self.report(changes, emit)

    async def purge_due(self) -> None:
        """Drop expired dedupe entries, at most once per PURGE_EVERY (the first call only
        starts the clock): the loops of the receiving sensors call it after each batch."""
        now = self.clock()
        if self.purged_at is None:
            self.purged_at = now
        elif now - self.purged_at >= PURGE_EVERY:
            await self.state.purge_expired(now)
            self.purged_at = now

    async def report(
        self, changes: Sequence[ObjectChange], emit: Emit, also: Sequence[SpaceWrite] = ()
    ) -> list[str]:
        """Emit the new changes among `changes`; return the ids of the events emitted.

        `also` is written with the dedupe state, after the events are on the bus."""
        admitted = [change for change in changes if admits(self.config, change)]
        self.counts.filtered += len(changes) - len(admitted)
        if not admitted:
            await self.state.write_spaces(also)
            return []
        events = [(change, to_event(change)) for change in admitted]
        seen_keys = [seen_key(change, event.id) for change, event in events]
        known = await self.state.read_spaces(
            {SEEN: seen_keys, NEWEST: sorted({newest_key(change) for change in admitted})}
        )
        seen, newest = known[SEEN], known[NEWEST]
        emitted: list[str] = []
        reported: list[ObjectChange] = []
        now_seen: dict[str, str] = {}
        now_newest: dict[str, str] = {}
        for (change, event), key in zip(events, seen_keys, strict=True):
            if key in seen or key in now_seen:
                self.counts.duplicates += 1
                log.info("duplicate record dropped", sensor=self.name, event_id=event.id)
                continue
            if is_older(change.sequencer, newest.get(newest_key(change))):
                self.counts.stale += 1
                log.info(
                    "older change dropped",
                    sensor=self.name,
                    event_id=event.id,
                    key=change.key,
                    sequencer=change.sequencer,
                    newest=newest.get(newest_key(change)),
                )
                continue
            await emit(event)
            emitted.append(event.id)
            reported.append(change)
            now_seen[key] = "1"
            if change.sequencer is not None:
                newest[newest_key(change)] = now_newest[newest_key(change)] = change.sequencer
        self.counts.emitted += len(emitted)
        expires_at = self.clock() + timedelta(seconds=self.config.dedupe.windowSeconds)
        writes = [
            SpaceWrite(SEEN, now_seen, expires_at),
            SpaceWrite(NEWEST, now_newest, expires_at),
        ]
        if self.keeps_listing:
            present, gone = noted(reported)
            writes.append(SpaceWrite(LISTING, present, delete=gone))
        await self.state.write_spaces([*writes, *also])
        return emitted


def poison_event(sensor: str, message_id: str, body: str, reason: str, now: datetime) -> Event:
    """The `eventflow.objectstore.poison` event for a message no decoder understood."""
    data: dict[str, Any] = {"reason": reason, "messageId": message_id, "body": body}
    return Event(
        id=f"poison/{message_id}",
        source=f"eventflow.objectstore/{sensor}",
        type=POISON_TYPE,
        subject=message_id,
        time=now,
        datacontenttype=JSON_CONTENT_TYPE,
        data=data,
    )
