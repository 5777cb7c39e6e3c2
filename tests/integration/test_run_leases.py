"""Run leases (issue 4): replicas sharing one store never drive the same run twice, and take
over the runs of a replica that stops renewing its leases.

Store-level tests pass `now` explicitly, on SQLite and PostgreSQL; controller-level tests run
two RunControllers, each with its own store connection, replica id and local executor, on one
PostgreSQL database, with a lease of one second.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventflow.executors.local import LocalExecutor
from eventflow.resources.models import WorkflowSpec
from eventflow.runs.leasing import LeaseKeeper
from eventflow.runs.runner import RunController
from eventflow.settings import ReplicaSettings
from eventflow.store.records import (
    Lease,
    LeaseLostError,
    Renewal,
    RunRecord,
    StepLog,
    StepRecord,
)
from eventflow.store.sql import EMBEDDED_REPLICA, SqlStore
from tests.integration.test_runner import create_run
from tests.integration.test_store import T0, dispatch

pytestmark = pytest.mark.timeout(60)

LEASE = timedelta(seconds=30)


@pytest.fixture
async def stores(store_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two replicas, "a" and "b", on one database, with 30 s leases."""
    a = await SqlStore.open(store_url, replica_id="a", lease_seconds=30)
    b = await SqlStore.open(store_url, replica_id="b", lease_seconds=30)
    yield a, b
    await a.close()
    await b.close()


async def test_a_run_is_leased_to_the_replica_that_created_it(stores):
    """record_dispatch leases each new run to its store's replica until now + the lease."""
    a, _ = stores
    await dispatch(a, "r1", "e1", "k1", T0)
    run = await a.get_run("r1")
    assert run is not None
    assert (run.owner, run.lease_until) == ("a", T0 + LEASE)


async def test_claim_skips_live_leases_and_takes_expired_ones(stores):
    """Until a lease runs out nobody else gets the run; after, one claim takes it, steps too."""
    a, b = stores
    await dispatch(a, "r1", "e1", "k1", T0)
    await dispatch(a, "r2", "e2", "k2", T0 + timedelta(seconds=1))
    assert await b.claim_runs(T0 + LEASE, 10) == []
    later = T0 + LEASE + timedelta(seconds=2)
    claimed = await b.claim_runs(later, 10)
    assert [(run.id, run.owner, run.lease_until) for run in claimed] == [
        ("r1", "b", later + LEASE),
        ("r2", "b", later + LEASE),
    ]
    assert [step.name for step in claimed[0].steps] == ["extract", "transform", "load"]
    assert await a.claim_runs(later, 10) == []


async def test_claim_takes_unowned_runs_oldest_first_up_to_the_limit_and_no_finished_one(stores):
    """Runs nobody owns are claimable at once; finished runs never; the oldest come first."""
    a, b = stores
    for number in range(4):
        await dispatch(a, f"r{number}", f"e{number}", f"k{number}", T0 + timedelta(seconds=number))
    await a.set_run_state("r0", "Succeeded", reason=None, now=T0)
    await a.release_runs(["r0", "r1", "r2", "r3"])
    assert [run.owner for run in await a.list_runs()] == [None, None, None, "a"]
    assert [run.id for run in await b.claim_runs(T0, 2)] == ["r1", "r2"]
    assert [run.id for run in await b.claim_runs(T0, 2)] == ["r3"]
    assert await b.claim_runs(T0, 2) == []


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_concurrent_claimers_never_get_the_same_run(store_url):
    """Four replicas claiming a dead replica's 80 runs at once share them out: each run once."""
    dead = await SqlStore.open(store_url, replica_id="dead", lease_seconds=30)
    for number in range(80):
        await dispatch(dead, f"r{number:02}", f"e{number}", f"k{number}", T0)
    await dead.close()
    claimers = [
        await SqlStore.open(store_url, replica_id=f"c{n}", lease_seconds=30) for n in range(4)
    ]
    later = T0 + LEASE + timedelta(seconds=1)

    async def claim_all(store: SqlStore) -> list[str]:
        mine: list[str] = []
        while batch := await store.claim_runs(later, 3):
            mine.extend(run.id for run in batch)
        return mine

    try:
        shares = await asyncio.gather(*(claim_all(store) for store in claimers))
        owners = {run.id: run.owner for run in await claimers[0].list_runs(limit=100)}
    finally:
        for store in claimers:
            await store.close()
    claimed = [run_id for share in shares for run_id in share]
    assert sorted(claimed) == [f"r{number:02}" for number in range(80)]
    assert sum(1 for share in shares if share) > 1  # they did claim side by side
    for replica, share in enumerate(shares):
        assert all(owners[run_id] == f"c{replica}" for run_id in share)


async def test_renew_extends_only_the_replicas_own_leases_and_reports_cancels(stores):
    """Renewal moves this replica's leases on, leaves others' alone, says what is no longer
    held (another replica's, or unknown) and which held runs were asked to cancel."""
    a, b = stores
    await dispatch(a, "r1", "e1", "k1", T0)
    await dispatch(a, "r2", "e2", "k2", T0)
    await dispatch(b, "r3", "e3", "k3", T0)
    await b.request_cancel("r2")
    at = T0 + timedelta(seconds=10)
    renewal = await a.renew_leases(["r1", "r2", "r3", "nope"], at)
    assert renewal == Renewal(held=frozenset({"r1", "r2"}), cancel_requested=frozenset({"r2"}))
    leases = {run.id: (run.owner, run.lease_until) for run in await a.list_runs()}
    assert leases == {
        "r1": ("a", at + LEASE),
        "r2": ("a", at + LEASE),
        "r3": ("b", T0 + LEASE),
    }
    assert await a.renew_leases([], at) == Renewal(held=frozenset(), cancel_requested=frozenset())


async def test_a_write_without_the_lease_is_refused_and_stores_nothing(stores):
    """Once another replica claimed the run, the old owner's progress and state writes raise
    LeaseLostError and change nothing; the new owner's go through."""
    a, b = stores
    await dispatch(a, "r1", "e1", "k1", T0)
    [claimed] = await b.claim_runs(T0 + LEASE + timedelta(seconds=1), 10)
    before = await a.get_run("r1")
    running = StepRecord(name="extract", state="Running", attempt=1, started_at=T0)
    message = "run 'r1' is not leased to replica 'a' (replica 'b' owns it); the write is refused"
    writes = [
        a.save_progress(
            "r1",
            steps=[running],
            logs=[StepLog("extract", 1, "hello")],
            run_state=("Running", None),
            now=T0,
        ),
        a.set_run_state("r1", "Failed", reason="lost", now=T0),
    ]
    for write in writes:
        with pytest.raises(LeaseLostError) as caught:
            await write
        assert str(caught.value) == message
        assert (caught.value.owner, caught.value.replica) == ("b", "a")
    assert await a.get_run("r1") == before == claimed
    assert await a.get_step_log("r1", "extract") is None
    await b.save_progress("r1", steps=[running], run_state=("Running", None), now=T0)
    after = await b.get_run("r1")
    assert after is not None
    assert (after.state, after.steps[0].state) == ("Running", "Running")


async def test_release_lets_another_replica_claim_at_once(stores):
    """A released run has no owner: its old owner may not write to it, anyone may claim it;
    releasing touches only the releasing replica's runs."""
    a, b = stores
    await dispatch(a, "r1", "e1", "k1", T0)
    await dispatch(b, "r2", "e2", "k2", T0)
    await a.release_runs(["r1", "r2"])
    leases = {run.id: run.owner for run in await a.list_runs()}
    assert leases == {"r1": None, "r2": "b"}
    with pytest.raises(LeaseLostError) as caught:
        await a.set_run_state("r1", "Running", reason=None, now=T0)
    assert str(caught.value) == (
        "run 'r1' is not leased to replica 'a' (no replica owns it); the write is refused"
    )
    assert [run.id for run in await b.claim_runs(T0, 10)] == ["r1"]
    await b.release_runs()
    assert {run.id: run.owner for run in await a.list_runs()} == {"r1": None, "r2": None}


async def test_claim_refuses_a_bad_limit_or_a_naive_time(stores):
    """Bad arguments are refused before any statement, naming the field."""
    a, _ = stores
    await dispatch(a, "r1", "e1", "k1", T0)
    await a.release_runs(["r1"])
    with pytest.raises(ValueError, match="limit") as limit:
        await a.claim_runs(T0, 0)
    assert str(limit.value) == "limit: 0 is not a positive number of runs"
    with pytest.raises(ValueError, match="timezone") as naive:
        await a.claim_runs(T0.replace(tzinfo=None), 5)
    assert str(naive.value) == (
        "now: 2024-06-01T12:00:00 has no timezone; pass an aware UTC datetime"
    )
    run = await a.get_run("r1")
    assert run is not None
    assert run.owner is None


async def test_open_refuses_a_bad_lease_and_names_the_embedded_replica(store_url, tmp_path):
    """A non-positive lease is refused with its value; SQLite's default replica is
    'embedded', PostgreSQL's a name of its own per process."""
    with pytest.raises(ValueError, match="lease_seconds") as caught:
        await SqlStore.open(store_url, lease_seconds=0)
    assert str(caught.value) == "lease_seconds: 0 is not a positive number of seconds"
    store = await SqlStore.open(store_url)
    other = await SqlStore.open(store_url)
    try:
        if store_url.startswith("sqlite"):
            assert store.lease.owner == other.lease.owner == EMBEDDED_REPLICA
        else:
            assert store.lease.owner != other.lease.owner
        assert store.lease.seconds == 30.0
    finally:
        await store.close()
        await other.close()


# --- two controllers on one PostgreSQL store --------------------------------------------

# Each attempt writes "<step> <attempt>" to ran.log, then waits for the file go-<step>-<n>.
STEP = textwrap.dedent(
    """\
    import os, sys, time
    step, attempt = os.environ["EVENTFLOW_STEP"], os.environ["EVENTFLOW_ATTEMPT"]
    with open(os.path.join(sys.argv[1], "ran.log"), "a") as ran:
        ran.write(f"{step} {attempt}\\n")
    while not os.path.exists(os.path.join(sys.argv[1], f"go-{step}-{attempt}")):
        time.sleep(0.02)
    """
)


def workflow(flags: Path) -> WorkflowSpec:
    command = {"command": ["python3", "-c", STEP, str(flags)]}
    return WorkflowSpec.model_validate(
        {
            "steps": [
                {"name": "work", **command, "retries": {"limit": 1, "backoff": 0}},
                {"name": "after", "depends": ["work"], **command},
            ]
        }
    )


class StalledRenewals:
    """A real store whose lease renewals and claims never reach the database, as a replica
    frozen for longer than its lease; it keeps the writes refused for being unleased."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.refused: list[LeaseLostError] = []
        self.writes_after_refusal = 0

    async def renew_leases(self, run_ids: Collection[str], now: datetime) -> Renewal:
        return Renewal(held=frozenset(run_ids), cancel_requested=frozenset())

    async def claim_runs(self, now: datetime, limit: int) -> list[RunRecord]:
        return []

    async def save_progress(self, run_id: str, **changes: Any) -> None:
        if self.refused:
            self.writes_after_refusal += 1
        try:
            await self.store.save_progress(run_id, **changes)
        except LeaseLostError as error:
            self.refused.append(error)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@dataclass
class Replica:
    store: SqlStore
    executor: LocalExecutor
    controller: RunController
    steps_dir: Path


@contextlib.asynccontextmanager
async def replica(
    name: str, store_url: str, tmp_path: Path, *, stalled: bool = False, lease: float = 1
) -> AsyncIterator[Replica]:
    """A started controller of replica `name`, its leases `lease` seconds long; closed (and
    its leases released) on exit."""
    store = await SqlStore.open(store_url, replica_id=name, lease_seconds=lease)
    executor = LocalExecutor(tmp_path / name / "steps")
    await executor.start()
    seen = StalledRenewals(store) if stalled else store
    controller = RunController(seen, executor, lambda: datetime.now(UTC), dict)
    await controller.start()
    try:
        yield Replica(store, executor, controller, tmp_path / name / "steps")
    finally:
        await controller.close(1.0)
        await executor.close()
        await store.close()


async def wait_for(store: SqlStore, run_id: str, check: Any, timeout: float = 20) -> Any:
    async with asyncio.timeout(timeout):
        while not check(run := await store.get_run(run_id)):
            await asyncio.sleep(0.02)
    return run


def ran(flags: Path) -> list[str]:
    path = flags / "ran.log"
    return path.read_text().splitlines() if path.exists() else []


def step_state(run: Any, name: str) -> tuple[str, int]:
    step = next(step for step in run.steps if step.name == name)
    return step.state, step.attempt


def finished(run: Any) -> bool:
    return run.state in ("Succeeded", "Failed", "Cancelled")


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_a_replica_starting_leaves_alone_the_run_another_drives(store_url, tmp_path):
    """B starts and claims every second while A drives a run for 2.5 lease lengths: A's
    renewals keep its lease well ahead of the clock, B submits nothing, each step runs once."""
    flags = tmp_path / "flags"
    flags.mkdir()
    async with replica("a", store_url, tmp_path, lease=2) as a:
        created = await create_run(a.store, workflow(flags))
        run_id = created.id
        a.controller.admit(created)
        await wait_for(a.store, run_id, lambda run: step_state(run, "work") == ("Running", 1))
        async with replica("b", store_url, tmp_path, lease=2) as b:
            # Renewed every 2/3 s, the lease is always more than 1.3 s ahead; A's own claims
            # alone (every second, of expired leases) would let it run down to nothing.
            lapsed = []
            end = asyncio.get_running_loop().time() + 5
            while asyncio.get_running_loop().time() < end:
                looked = datetime.now(UTC)
                run = await b.store.get_run(run_id)
                assert run is not None
                if run.owner != "a" or run.lease_until - looked < timedelta(seconds=0.5):
                    lapsed.append((looked, run.owner, run.lease_until))
                await asyncio.sleep(0.05)
            assert lapsed == []
            assert step_state(run, "work") == ("Running", 1)
            (flags / "go-work-1").touch()
            (flags / "go-after-1").touch()
            run = await wait_for(b.store, run_id, finished)
            assert not b.steps_dir.exists() or not any(b.steps_dir.iterdir())
    assert (run.state, run.owner) == ("Succeeded", "a")
    assert ran(flags) == ["work 1", "after 1"]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_a_dead_replicas_run_is_taken_over_after_its_lease_and_finishes_once(
    store_url, tmp_path
):
    """A dies mid-step without releasing: B, already running, claims the run once A's lease
    ran out, learns the attempt was lost (adopt), retries it and finishes the run once."""
    flags = tmp_path / "flags"
    flags.mkdir()
    (flags / "go-work-2").touch()
    (flags / "go-after-1").touch()
    async with replica("b", store_url, tmp_path) as b:
        # A renews every second: on a busy machine a stall of its loop under 2 s does not let
        # the lease lapse before A dies, which would let B take the run while A still runs.
        store = await SqlStore.open(store_url, replica_id="a", lease_seconds=3)
        executor = LocalExecutor(tmp_path / "a" / "steps")
        await executor.start()
        before = asyncio.all_tasks()
        controller = RunController(store, executor, lambda: datetime.now(UTC), dict)
        await controller.start()
        created = await create_run(store, workflow(flags))
        run_id = created.id
        controller.admit(created)
        await wait_for(store, run_id, lambda run: step_state(run, "work") == ("Running", 1))
        async with asyncio.timeout(10):  # Running means spawned: wait until it runs, too
            while ran(flags) != ["work 1"]:
                await asyncio.sleep(0.02)
        # death: A's controller stops where it is, its step process goes, nothing released
        died = datetime.now(UTC)
        doomed = {
            task
            for task in asyncio.all_tasks() - before
            if not task.get_name().startswith("local step")
        } - {asyncio.current_task()}
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        await executor.close()
        await store.close()
        run = await wait_for(b.store, run_id, lambda run: run.owner == "b")
        assert run.lease_until - timedelta(seconds=1) >= died  # not before A's lease ended
        run = await wait_for(b.store, run_id, finished)
    assert (run.state, run.owner) == ("Succeeded", "b")
    assert [(step.name, step.state, step.attempt) for step in run.steps] == [
        ("work", "Succeeded", 2),
        ("after", "Succeeded", 1),
    ]
    assert ran(flags) == ["work 1", "work 2", "after 1"]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_a_replica_that_lost_its_lease_stops_writing(store_url, tmp_path):
    """A's renewals stall; B claims the run and drives it. When A's step ends, the store
    refuses A's write; A writes nothing more, and the run ends as B drives it."""
    flags = tmp_path / "flags"
    flags.mkdir()
    (flags / "go-after-1").touch()
    async with replica("a", store_url, tmp_path, stalled=True) as a:
        stalled = a.controller._store
        assert isinstance(stalled, StalledRenewals)
        created = await create_run(a.store, workflow(flags))
        run_id = created.id
        a.controller.admit(created)
        await wait_for(a.store, run_id, lambda run: step_state(run, "work") == ("Running", 1))
        async with replica("b", store_url, tmp_path) as b:
            # B adopts attempt 1, which its executor never ran: Failed, retried as attempt 2
            await wait_for(b.store, run_id, lambda run: step_state(run, "work") == ("Running", 2))
            (flags / "go-work-1").touch()  # A's attempt 1 ends: A tries to store it
            async with asyncio.timeout(10):
                while not stalled.refused:
                    await asyncio.sleep(0.02)
            run = await b.store.get_run(run_id)
            assert run is not None
            assert (run.owner, step_state(run, "work")) == ("b", ("Running", 2))
            (flags / "go-work-2").touch()
            run = await wait_for(b.store, run_id, finished)
    assert [str(error) for error in stalled.refused] == [
        "run 'run-1' is not leased to replica 'a' (replica 'b' owns it); the write is refused"
    ]
    assert stalled.writes_after_refusal == 0
    assert (run.state, run.owner) == ("Succeeded", "b")
    assert [(step.name, step.state, step.attempt) for step in run.steps] == [
        ("work", "Succeeded", 2),
        ("after", "Succeeded", 1),
    ]
    assert ran(flags) == ["work 1", "work 2", "after 1"]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_a_cancel_asked_of_another_replica_reaches_the_owner_at_its_renewal(
    store_url, tmp_path
):
    """B is asked to cancel a run A drives: B only flags it; A learns of it when it renews
    its lease, stops the step and ends the run Cancelled."""
    flags = tmp_path / "flags"
    flags.mkdir()
    async with (
        replica("a", store_url, tmp_path) as a,
        replica("b", store_url, tmp_path) as b,
    ):
        created = await create_run(a.store, workflow(flags))
        a.controller.admit(created)
        await wait_for(a.store, created.id, lambda run: step_state(run, "work") == ("Running", 1))
        # Running is stored at the spawn; the cancel must find the step's own code started.
        async with asyncio.timeout(20):
            while ran(flags) != ["work 1"]:
                await asyncio.sleep(0.02)
        answered = await b.controller.cancel(created.id)
        assert answered is not None
        assert (answered.state, answered.cancel_requested, answered.owner) == ("Running", True, "a")
        run = await wait_for(a.store, created.id, finished, timeout=10)
    assert (run.state, run.reason, run.owner) == ("Cancelled", "cancelled by request", "a")
    assert step_state(run, "work") == ("Cancelled", 1)
    assert ran(flags) == ["work 1"]


class RenewalFailsOnce:
    """A real store whose first lease renewal fails, as a database that went away a moment."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.failures = 0

    async def renew_leases(self, run_ids: Collection[str], now: datetime) -> Renewal:
        if not self.failures:
            self.failures += 1
            raise ConnectionError("database is gone")
        return await self.store.renew_leases(run_ids, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_lease_keeper_goes_on_renewing_after_a_failed_renewal(store_url):
    """A renewal the store fails is logged and done again at the next tick."""
    store = await SqlStore.open(store_url, replica_id="a", lease_seconds=0.3)
    flaky = RenewalFailsOnce(store)
    created = datetime.now(UTC)
    await dispatch(store, "r1", "e1", "k1", created)
    renewals: list[tuple[Renewal, frozenset[str]]] = []

    async def renewed(renewal: Renewal, lost: frozenset[str]) -> None:
        renewals.append((renewal, lost))

    async def claimed(runs: list[RunRecord]) -> None:
        raise AssertionError(f"nothing to claim: {runs}")

    keeper = LeaseKeeper(
        flaky,  # type: ignore[arg-type]
        lambda: datetime.now(UTC),
        held=lambda: ["r1"],
        on_claimed=claimed,
        on_renewed=renewed,
    )
    keeper.start()
    try:
        async with asyncio.timeout(5):
            while not renewals:
                await asyncio.sleep(0.01)
    finally:
        await keeper.stop()
        run = await store.get_run("r1")
        await store.close()
    assert flaky.failures == 1
    assert renewals[0] == (Renewal(frozenset({"r1"}), frozenset()), frozenset())
    assert run is not None
    assert run.lease_until is not None
    assert run.lease_until > created + timedelta(seconds=0.3)


async def test_the_services_replica_settings_lease_its_runs_and_a_clean_stop_releases_them(
    server_factory, tmp_path
):
    """replica.id and replica.lease_seconds reach the store: a run the service creates is
    leased to that name, and a clean stop leaves the unfinished run to any replica at once."""
    flags = tmp_path / "flags"
    flags.mkdir()
    resources = tmp_path / "resources"
    resources.mkdir()
    spec = workflow(flags).model_dump(mode="json", by_alias=True, exclude_defaults=True)
    documents = [
        {"kind": "Sensor", "metadata": {"name": "hook"}, "spec": {"webhook": {"path": "hook"}}},
        {
            "kind": "Trigger",
            "metadata": {"name": "on-hook"},
            "spec": {"events": {"hook": {"sensor": "hook"}}, "workflow": "flow"},
        },
        {"kind": "WorkflowTemplate", "metadata": {"name": "flow"}, "spec": spec},
    ]
    (resources / "flow.yaml").write_text(
        yaml.safe_dump_all({"apiVersion": "eventflow.io/v1alpha1"} | doc for doc in documents)
    )
    replica_settings = ReplicaSettings(id="pod-0", lease_seconds=5)
    async with server_factory(
        resources, replica=replica_settings, shutdown_grace_seconds=0.1
    ) as server:
        assert server.service.store.lease == Lease("pod-0", 5.0)
        before = datetime.now(UTC)
        assert (await server.client.post("/webhooks/hook", json={})).status_code == 202
        [created] = await server.wait_runs(1)
        run = await wait_for(
            server.service.store, created["id"], lambda run: step_state(run, "work")[0] == "Running"
        )
        assert run.owner == "pod-0"
        assert (
            before + timedelta(seconds=5)
            <= run.lease_until
            <= datetime.now(UTC) + timedelta(seconds=5)
        )
        store_url = server.service.settings.store_url
    store = await SqlStore.open(store_url, replica_id="other")
    try:
        stopped = await store.get_run(created["id"])
        assert stopped is not None
        assert (stopped.state, stopped.owner, stopped.lease_until) == ("Running", None, None)
        assert [run.id for run in await store.claim_runs(datetime.now(UTC), 10)] == [created["id"]]
    finally:
        await store.close()
