"""The poll mode: list the bucket every interval and report what changed since the last time.

The listing (ListObjectsV2, paginated, under `prefix`) and the checkpoint of the last one (the
"listing" space: key -> {etag, size, lastModified}) are read page by page and merged in key
order by `listing.merge`, so memory holds two pages whatever the bucket's size. Each page's
changes are emitted before the checkpoint is updated (promise 1); a crash in between reports
them again with the same ids. The checkpoint lives in eventflow's store, so a restart lists
against it and reports only what changed meanwhile. The first listing reports every object or
none (`poll.firstRun`). This module does not decide the event shape (`listing.to_change`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from eventflow.sensing.protocol import Emit, SpaceWrite
from sensors.objectstore.config import ObjectStoreConfig
from sensors.objectstore.listing import LISTING, Difference, Kind, Listed, merge, to_change
from sensors.objectstore.reporting import Health, Reporter

log = structlog.get_logger()

POLL = "poll"
INITIALIZED = "initialized"


@dataclass
class Cycle:
    """What one listing found."""

    listed: int = 0
    created: int = 0
    changed: int = 0
    removed: int = 0
    emitted: int = 0


def _listed(item: dict[str, Any]) -> Listed:
    modified = item["LastModified"]
    stamp = modified.isoformat() if isinstance(modified, datetime) else str(modified)
    return Listed(str(item["Key"]), str(item.get("ETag", "")).strip('"'), int(item["Size"]), stamp)


def _modified_by(listed: Listed, moment: datetime) -> bool:
    """Whether `listed` was last modified at or before `moment`; an object without a readable
    time counts as settled, so it is reported rather than left out for good."""
    try:
        modified = datetime.fromisoformat(listed.last_modified)
    except ValueError:
        return True
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    return modified <= moment


class BucketPoller:
    def __init__(
        self,
        reporter: Reporter[ObjectStoreConfig],
        health: Health,
        grace: timedelta | None = None,
    ) -> None:
        """`grace`: leave out changes younger than this, which a notification may still
        report (the sqs mode's reconcile listing); they are looked at again next time."""
        self.reporter = reporter
        self.health = health
        self.grace = grace
        config = reporter.config
        assert config.bucket is not None  # the config requires it for mode poll
        self.bucket: str = config.bucket

    async def run(self, s3: Any, emit: Emit) -> None:
        """List every `poll.intervalSeconds` until cancelled; AWS errors propagate."""
        interval = self.reporter.config.poll.intervalSeconds
        while True:
            started = time.monotonic()
            await self.cycle(s3, emit)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def cycle(self, s3: Any, emit: Emit) -> Cycle:
        """One listing merged with the checkpoint: emit the changes, then record them."""
        config = self.reporter.config
        state = self.reporter.state
        first = await state.get(POLL, INITIALIZED) is None
        quiet = first and config.poll.firstRun == "none"
        pages = self._pages(s3)
        cycle = Cycle()
        listed: list[Listed] = []
        known: list[Listed] = []
        listed_done = known_done = False
        after: str | None = None
        while True:
            if not listed and not listed_done:
                page = await anext(pages, None)
                listed_done = page is None
                listed = page or []
                self.health.up()
                cycle.listed += len(listed)
            if not known and not known_done:
                rows = await state.scan(
                    LISTING, prefix=config.prefix, after=after, limit=config.poll.pageSize
                )
                known_done = len(rows) < config.poll.pageSize
                after = rows[-1][0] if rows else after
                known = [Listed.from_json(key, value) for key, value in rows]
                known = [item for item in known if item.key.endswith(config.suffix)]
            merged = merge(listed, known, listed_done=listed_done, known_done=known_done)
            listed, known = listed[merged.listed_used :], known[merged.known_used :]
            await self._record(merged.differences, emit, quiet, cycle)
            if listed_done and known_done and not listed and not known:
                break
        if first:
            await state.put_many(POLL, {INITIALIZED: self.reporter.clock().isoformat()})
        log.info("bucket listed", sensor=self.reporter.name, bucket=self.bucket, **cycle.__dict__)
        return cycle

    async def _pages(self, s3: Any) -> AsyncIterator[list[Listed]]:
        config = self.reporter.config
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(
            Bucket=self.bucket,
            Prefix=config.prefix,
            PaginationConfig={"PageSize": config.poll.pageSize},
        ):
            yield [
                _listed(item)
                for item in page.get("Contents", [])
                if str(item["Key"]).endswith(config.suffix)
            ]

    async def _record(
        self, differences: list[Difference], emit: Emit, quiet: bool, cycle: Cycle
    ) -> None:
        reporter = self.reporter
        now = reporter.clock()
        if self.grace is not None:
            settled = now - self.grace
            differences = [
                difference
                for difference in differences
                if difference.now is None or _modified_by(difference.now, settled)
            ]
        if not differences:
            return
        kinds = [difference.kind for difference in differences]
        cycle.created += kinds.count(Kind.CREATED)
        cycle.changed += kinds.count(Kind.CHANGED)
        cycle.removed += kinds.count(Kind.REMOVED)
        present = {
            difference.key: difference.now.to_json()
            for difference in differences
            if difference.now is not None
        }
        gone = [difference.key for difference in differences if difference.kind is Kind.REMOVED]
        checkpoint = SpaceWrite(LISTING, present, delete=gone)
        if quiet:
            await reporter.state.write_spaces([checkpoint])
            return
        changes = [
            to_change(difference, self.bucket, reporter.config.region, now)
            for difference in differences
        ]
        cycle.emitted += len(await reporter.report(changes, emit, also=[checkpoint]))
