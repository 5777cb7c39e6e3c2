"""Keeping run leases: how replicas sharing one store never drive the same run twice, and
take over the runs of a replica that died (issue 4).

Every run is leased to one replica (the one whose dispatcher created it, or the last to
claim it). The `LeaseKeeper` of a replica renews, in one statement every third of the lease,
the leases of all the runs its controller holds, and learns from the answer which of them
another replica has taken (its lease had run out) and which someone asked to cancel; every
half of the lease it claims, in batches, the unfinished runs whose lease ran out or that no
replica holds. What to do with what it learns is the controller's (`runs/runner.py`): this
module keeps no run and never writes one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime

import structlog

from eventflow.store.records import Renewal, RunRecord, Store

log = structlog.get_logger()

# Runs per claim statement: a replica that died with thousands of runs is taken over in
# several short transactions, not one that holds thousands of row locks.
CLAIM_BATCH = 100

Claimed = Callable[[list[RunRecord]], Awaitable[None]]
Renewed = Callable[[Renewal, frozenset[str]], Awaitable[None]]


class LeaseKeeper:
    """Renews the leases of the runs `held()` names and claims runs nobody holds.

    `on_claimed` gets each batch of claimed runs (with their steps); `on_renewed` gets each
    renewal and the held runs it found leased to another replica. A failing store is logged
    and tried again at the next tick: a lease still runs while the database is away.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        *,
        held: Callable[[], Collection[str]],
        on_claimed: Claimed,
        on_renewed: Renewed,
    ) -> None:
        self._store = store
        self._clock = clock
        self._held = held
        self._on_claimed = on_claimed
        self._on_renewed = on_renewed
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def replica(self) -> str:
        return self._store.lease.owner

    async def take_over(self) -> None:
        """At start: let go of the runs an earlier process of this replica's name held (it
        is gone: this one is it), then claim whatever no live replica holds."""
        await self._store.release_runs()
        await self.claim()

    async def claim(self) -> None:
        """Claim batch after batch until a batch comes back short."""
        while True:
            claimed = await self._store.claim_runs(self._clock(), CLAIM_BATCH)
            if claimed:
                log.info("runs claimed", runs=len(claimed), replica=self.replica)
                await self._on_claimed(claimed)
            if len(claimed) < CLAIM_BATCH:
                return

    async def renew(self) -> None:
        held = frozenset(self._held())
        if not held:
            return
        renewal = await self._store.renew_leases(held, self._clock())
        await self._on_renewed(renewal, held - renewal.held)

    def start(self) -> None:
        seconds = self._store.lease.seconds
        self._tasks = [
            asyncio.create_task(self._every(seconds / 3, self.renew), name="run-lease-renewal"),
            asyncio.create_task(self._every(seconds / 2, self.claim), name="run-claims"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _every(self, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception:
                log.exception("run leases not kept this time; trying again", retry_in=seconds)
