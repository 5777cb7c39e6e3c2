"""What the store keeps, as plain frozen data, and the `Store` seam the rest of eventflow uses.

The dispatcher writes an event with its decisions and the runs it starts in one call; the run
controller reads and writes runs and steps; the API reads everything. None of them imports
SQLAlchemy: they import this module. It holds no I/O and does not validate workflow specs or
trigger rules; the store keeps the snapshots it is given.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from eventflow.events import ReceivedEvent

RUN_STATES = ("Pending", "Running", "Succeeded", "Failed", "Cancelled")
UNFINISHED_RUN_STATES = ("Pending", "Running")
TERMINAL_RUN_STATES = ("Succeeded", "Failed", "Cancelled")
STEP_STATES = ("Pending", "Running", "Succeeded", "Failed", "Skipped", "Cancelled", "TimedOut")


class RunFinishedError(Exception):
    """A write to a run that has already finished: a finished run stays as it ended."""

    def __init__(self, run_id: str, state: str) -> None:
        super().__init__(f"run {run_id!r} already finished ({state}); it is not changed again")
        self.run_id = run_id
        self.state = state


class LeaseLostError(Exception):
    """A write to a run this replica does not own: another replica claimed it (its lease had
    expired) or it was released. The owner drives the run; this replica leaves it alone."""

    def __init__(self, run_id: str, replica: str, owner: str | None) -> None:
        held = f"replica {owner!r} owns it" if owner is not None else "no replica owns it"
        super().__init__(
            f"run {run_id!r} is not leased to replica {replica!r} ({held}); the write is refused"
        )
        self.run_id = run_id
        self.replica = replica
        self.owner = owner


def aware_utc(value: datetime, name: str) -> datetime:
    """`value` in UTC; a ValueError naming the field `name` when it has no timezone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: {value.isoformat()} has no timezone; pass an aware UTC datetime")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step of a run; `attempt` counts from 1 once the step first runs."""

    name: str
    state: str  # one of STEP_STATES
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    outputs: dict[str, Any] | None = None
    log_tail: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STEP_STATES:
            raise ValueError(
                f"steps.{self.name}.state: {self.state!r} is not a step state;"
                f" use one of {STEP_STATES}"
            )
        for field in ("started_at", "finished_at"):
            value = getattr(self, field)
            if value is not None:
                aware_utc(value, f"steps.{self.name}.{field}")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a workflow, with the snapshot of the workflow it started with."""

    id: str
    trigger: str
    workflow: str
    event_id: str
    dedupe_key: str
    arguments: dict[str, str]
    workflow_spec: dict[str, Any]  # snapshot of WorkflowSpec at start
    state: str  # one of RUN_STATES
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    steps: tuple[StepRecord, ...] = ()  # in the order they were created
    owner: str | None = None  # the replica whose lease on the run is the latest
    lease_until: datetime | None = None  # past it, any replica may claim an unfinished run


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run the dispatcher wants to start; its steps are created Pending, in this order."""

    id: str
    trigger: str
    workflow: str
    dedupe_key: str
    arguments: dict[str, str]
    workflow_spec: dict[str, Any]
    step_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """What one trigger decided about one event.

    `run_id` is the id of the `NewRun` this decision started. When that run was a dedupe hit,
    the store records (and returns) the id of the run that already had the key instead.
    """

    trigger: str
    matched: bool
    reason: str | None
    run_id: str | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as received, with the decisions the triggers made about it."""

    id: str
    sensor: str
    type: str
    source: str
    subject: str | None
    received_at: datetime
    document: dict[str, Any]  # the structured CloudEvent
    decisions: tuple[Decision, ...] = ()


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """What `record_dispatch` did with the runs it was given."""

    created: tuple[RunRecord, ...]  # runs inserted by this call
    existing: dict[str, str]  # dedupe hit: trigger -> id of the run that already had the key


@dataclass(frozen=True, slots=True)
class StepLog:
    """The whole output of one attempt of one step."""

    step: str
    attempt: int
    text: str


DEFAULT_LEASE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Lease:
    """Who this process is among the replicas sharing a store, and for how long a run it
    drives stays its own without a renewal."""

    owner: str
    seconds: float

    def __post_init__(self) -> None:
        if not self.owner:
            raise ValueError("replica id: an empty name; give each replica a unique name")
        if not self.seconds > 0:
            raise ValueError(f"lease_seconds: {self.seconds} is not a positive number of seconds")


@dataclass(frozen=True, slots=True)
class Renewal:
    """What renewing this replica's leases found."""

    held: frozenset[str]  # the runs still leased to this replica, now renewed
    cancel_requested: frozenset[str]  # those of them someone asked to cancel


DispatchItem = tuple[ReceivedEvent, Sequence[Decision], Sequence[NewRun]]
"""One event with what the engine decided for it, as `record_dispatches` takes it."""


class Store(Protocol):
    """Durable state of eventflow. Every timestamp in and out is timezone-aware UTC.

    Methods that name a run which does not exist raise LookupError, except the readers
    (`get_run`, `request_cancel`, `get_step_log`, `get_event`) which answer None. An
    unreachable database raises eventflow.errors.TemporaryError.
    """

    @property
    def lease(self) -> Lease:
        """The replica this store writes as: runs it creates or claims are leased to it."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def record_dispatch(
        self,
        event: ReceivedEvent,
        decisions: Sequence[Decision],
        runs: Sequence[NewRun],
        now: datetime,
    ) -> DispatchResult:
        """Store the event, its decisions and its runs in one transaction, idempotently.
        The runs it creates are leased to this store's replica until `now` + the lease."""
        ...

    async def record_dispatches(
        self, batch: Sequence[DispatchItem], now: datetime
    ) -> list[DispatchResult]:
        """`record_dispatch` for several events in one transaction, results in order."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(
        self, *, limit: int = 50, state: str | None = None, trigger: str | None = None
    ) -> list[RunRecord]:
        """Newest first, steps included."""
        ...

    async def unfinished_runs(self) -> list[RunRecord]:
        """Pending or Running runs, oldest first."""
        ...

    async def count_runs(self, trigger: str | None = None) -> dict[str, int]:
        """How many runs are in each state (every state named, 0 included)."""
        ...

    async def claim_runs(self, now: datetime, limit: int) -> list[RunRecord]:
        """Lease to this replica, in one statement, up to `limit` unfinished runs, oldest
        first, that no replica owns or whose lease expired before `now`; answer them with
        their steps. Runs another claimer is taking at the same moment are skipped."""
        ...

    async def renew_leases(self, run_ids: Collection[str], now: datetime) -> Renewal:
        """Extend to `now` + the lease the leases this replica still holds among `run_ids`."""
        ...

    async def release_runs(self, run_ids: Collection[str] | None = None) -> None:
        """Give up the leases this replica holds on the unfinished runs among `run_ids`
        (None: on all of them), so that any replica may claim them at once."""
        ...

    async def save_progress(
        self,
        run_id: str,
        *,
        steps: Sequence[StepRecord] = (),
        logs: Sequence[StepLog] = (),
        run_state: tuple[str, str | None] | None = None,
        now: datetime,
    ) -> None:
        """save_steps, save_step_log and set_run_state (state, reason) in ONE transaction:
        what the run controller learned and decided in one turn, stored before it acts.
        Raises RunFinishedError, storing nothing, when the run has already finished, and
        LeaseLostError, storing nothing, when the run is not leased to this replica."""
        ...

    async def set_run_state(
        self, run_id: str, state: str, *, reason: str | None, now: datetime
    ) -> None:
        """Stamp started_at on the first Running and finished_at on a terminal state.
        Raises RunFinishedError when the run has already finished, LeaseLostError when it
        is not leased to this replica."""
        ...

    async def request_cancel(self, run_id: str) -> RunRecord | None: ...

    async def save_steps(self, run_id: str, steps: Sequence[StepRecord]) -> None:
        """Insert or replace steps by name, in one transaction."""
        ...

    async def save_step_log(self, run_id: str, step: str, attempt: int, text: str) -> None: ...

    async def get_step_log(self, run_id: str, step: str, attempt: int | None = None) -> str | None:
        """The log of one attempt; the latest attempt when `attempt` is None."""
        ...

    async def get_event(self, event_id: str, sensor: str | None = None) -> EventRecord | None:
        """With its decisions; the earliest received when several sensors heard the id."""
        ...

    async def list_events(self, *, limit: int = 50) -> list[EventRecord]:
        """Newest first, decisions included."""
        ...
