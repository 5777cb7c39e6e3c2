"""The run controller: the async shell around `planning.plan`.

Each active run has one task that loops: plan -> store the transitions -> act on them
(submit, cancel) -> wait for a fact (a step update, a retry time, a cancel request). The
store is written before the executor is asked to act (promise 3), so after a crash the
controller resumes from the store: it re-opens the unfinished runs it claims and asks the
executor to adopt the attempts the store says were running.

A controller drives only the runs leased to its replica (`leasing.py`): those its dispatcher
created and those it claims, at start and whenever another replica's lease runs out. The
store refuses a write to a run leased to another replica; the controller then leaves that
run, its steps untouched, to the new owner, which adopts them.

Runs of a trigger with a concurrency limit wait as Pending until a slot frees.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from eventflow.executors.protocol import Executor, StepKey, StepSpec, StepUpdate
from eventflow.resources.models import WorkflowSpec
from eventflow.runs.active import ActiveRun, StepLabels, apply_plan
from eventflow.runs.leasing import LeaseKeeper
from eventflow.runs.planning import CompiledWorkflow, plan
from eventflow.runs.states import RunState, StepState
from eventflow.store.records import (
    LeaseLostError,
    Renewal,
    RunFinishedError,
    RunRecord,
    StepLog,
    Store,
)

log = structlog.get_logger()

_RETRY_FIRST_SECONDS = 0.5
_RETRY_MAX_SECONDS = 30.0
_STOP_SECONDS = 5.0
# Messages a run task receives besides step updates.
_WAKE = "wake"
_STOP = "stop"


class RunController:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        clock: Callable[[], datetime],
        concurrency_limits: Callable[[], Mapping[str, int | None]],
        step_labels: StepLabels | None = None,
    ) -> None:
        self._store = store
        self._executor = executor
        self._clock = clock
        self._limits = concurrency_limits
        self._active: dict[str, ActiveRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiting: defaultdict[str, deque[RunRecord]] = defaultdict(deque)
        self._workflows: dict[str, CompiledWorkflow] = {}
        self._updates_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._step_labels = step_labels
        self._leases = LeaseKeeper(
            store, clock, held=self._held, on_claimed=self._resume, on_renewed=self._renewed
        )

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Watch the executor, resume the unfinished runs no live replica holds, and from
        then on keep their leases and claim the runs of replicas that stop renewing theirs."""
        self._updates_task = asyncio.create_task(self._route_updates(), name="step-updates")
        await self._leases.take_over()
        self._leases.start()

    async def _resume(self, claimed: list[RunRecord]) -> None:
        """Drive runs claimed from the store: re-open the Running ones, adopting the attempts
        the store says were running, and admit the Pending ones. While closing, it drives
        nothing new: `close` releases what was claimed."""
        if self._stopping:
            return
        fresh = [record for record in claimed if not self._holds(record.id)]
        running_keys: list[StepKey] = []
        for record in fresh:
            if record.state == RunState.RUNNING.value:
                self._open(record)
                running_keys.extend(
                    StepKey(record.id, step.name, step.attempt)
                    for step in record.steps
                    if step.state == StepState.RUNNING.value
                )
        for record in fresh:
            if record.state == RunState.PENDING.value:
                self.admit(record)
        if fresh:
            log.info("runs resumed", runs=len(fresh), steps_adopted=len(running_keys))
        if running_keys:
            await self._executor.adopt(running_keys)

    def _holds(self, run_id: str) -> bool:
        return run_id in self._active or any(
            record.id == run_id for queue in self._waiting.values() for record in queue
        )

    def _held(self) -> list[str]:
        """The runs this replica drives or keeps waiting for a slot: the leases it renews."""
        waiting = [record.id for queue in self._waiting.values() for record in queue]
        return [*self._active, *waiting]

    async def _renewed(self, renewal: Renewal, lost: frozenset[str]) -> None:
        for run_id in lost:
            self._let_go(run_id)
        for run_id in renewal.cancel_requested:
            active = self._active.get(run_id)
            if active is None or not active.cancel_requested:
                # asked through another replica's API: only the owner can act on it
                await self.cancel(run_id)

    def _let_go(self, run_id: str) -> None:
        """Stop driving a run another replica has claimed, leaving its steps running."""
        log.warning("run lease lost; another replica drives the run", run_id=run_id)
        active = self._active.get(run_id)
        if active is not None:
            active.lost = True
            active.inbox.put_nowait(_STOP)
        for trigger, queue in self._waiting.items():
            self._waiting[trigger] = deque(record for record in queue if record.id != run_id)

    async def close(self, grace_seconds: float) -> None:
        """Start nothing new; give running steps `grace_seconds`, then stop them, and release
        the leases of the runs left unfinished so that another replica takes them at once."""
        self._stopping = True
        for active in self._active.values():
            active.inbox.put_nowait(_WAKE)
        try:
            async with asyncio.timeout(grace_seconds):
                while any(active.running_steps() for active in self._active.values()):
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            log.warning("steps still running at shutdown, stopping them")
        await self._executor.close()
        if self._updates_task is not None:
            await self._updates_task
        # The executor's last updates (steps it interrupted) are queued: let each run task
        # record them, then leave; the runs stay unfinished in the store and resume later.
        tasks = list(self._tasks.values())
        for active in self._active.values():
            active.inbox.put_nowait(_STOP)
        _, stuck = await asyncio.wait(tasks, timeout=_STOP_SECONDS) if tasks else ((), ())
        for task in stuck:  # waiting to retry a failed store: what it holds is redone later
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._leases.stop()
        try:
            # all of them: runs the dispatcher created while this closed were never admitted
            await self._store.release_runs()
        except Exception:
            log.exception("run leases not released; other replicas take the runs when they end")

    # --- requests ----------------------------------------------------------------------

    def admit(self, record: RunRecord) -> None:
        """A run was created (or found Pending after a restart): start it when a slot frees."""
        if record.id in self._active or self._stopping:
            return
        self._waiting[record.trigger].append(record)
        self._admit_waiting(record.trigger)

    async def cancel(self, run_id: str) -> RunRecord | None:
        record = await self._store.request_cancel(run_id)
        if record is None:
            return None
        active = self._active.get(run_id)
        if active is not None:
            active.cancel_requested = True
            active.inbox.put_nowait(_WAKE)
        elif record.state == RunState.PENDING.value:
            self._waiting[record.trigger] = deque(
                waiting for waiting in self._waiting[record.trigger] if waiting.id != run_id
            )
            now = self._clock()
            try:
                await self._store.set_run_state(
                    run_id, RunState.CANCELLED.value, reason="cancelled by request", now=now
                )
            except LeaseLostError as error:
                # The owner learns of the request when it renews its lease, and cancels it.
                log.info("run to cancel is another replica's", run_id=run_id, owner=error.owner)
        return await self._store.get_run(run_id)

    # --- internals ---------------------------------------------------------------------

    def _admit_waiting(self, trigger: str) -> None:
        limit = self._limits().get(trigger)
        queue = self._waiting[trigger]
        while queue and not self._stopping:
            active = sum(1 for run in self._active.values() if run.record.trigger == trigger)
            if limit is not None and active >= limit:
                return
            self._open(queue.popleft())

    def _compiled(self, spec: Mapping[str, Any]) -> CompiledWorkflow:
        key = json.dumps(spec, sort_keys=True)
        compiled = self._workflows.get(key)
        if compiled is None:
            compiled = CompiledWorkflow.compile(WorkflowSpec.model_validate(spec))
            if len(self._workflows) > 256:
                self._workflows.clear()
            self._workflows[key] = compiled
        return compiled

    def _open(self, record: RunRecord) -> None:
        active = ActiveRun(record, self._compiled(record.workflow_spec))
        self._active[record.id] = active
        self._tasks[record.id] = asyncio.create_task(self._drive(active), name=f"run-{record.id}")

    async def _route_updates(self) -> None:
        async for update in self._executor.updates():
            active = self._active.get(update.key.run_id)
            if active is None:
                log.warning("update for an unknown run", step=str(update.key))
                continue
            active.inbox.put_nowait(update)

    async def _drive(self, active: ActiveRun) -> None:
        run_id = active.record.id
        with structlog.contextvars.bound_contextvars(run_id=run_id):
            try:
                delay = _RETRY_FIRST_SECONDS
                while True:
                    try:
                        await self._loop(active)
                        return
                    except RunFinishedError as finished:
                        # Admitted from a stale record: the run ended while it waited.
                        log.info("run already finished; leaving it", state=finished.state)
                        return
                    except LeaseLostError as lost:
                        # Its steps are the new owner's to adopt: they are not cancelled.
                        log.warning("run lease lost; leaving the run", owner=lost.owner)
                        return
                    except Exception:
                        # The store is the truth and what was not saved is still pending in
                        # `active`: after a pause, the next turn saves it and goes on.
                        log.exception("run controller failed; trying again", retry_in=delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, _RETRY_MAX_SECONDS)
            finally:
                self._active.pop(run_id, None)
                self._tasks.pop(run_id, None)
                self._idle.set()
                self._admit_waiting(active.record.trigger)

    async def _loop(self, active: ActiveRun) -> None:
        if active.record.state == RunState.PENDING.value and active.unsaved_state is None:
            active.unsaved_state = (RunState.RUNNING, None)
            log.info("run started", trigger=active.record.trigger)
        while True:
            now = self._clock()
            decided = plan(
                active.workflow,
                active.steps,
                active.record.arguments,
                active.run_info,
                now,
                cancel_requested=active.cancel_requested,
            )
            submits = apply_plan(
                active, decided, now, starting=not self._stopping, step_labels=self._step_labels
            )
            active.unsubmitted.extend(submits)
            finished = decided.run_state.terminal and not active.running_steps()
            if finished:
                active.unsaved_state = (decided.run_state, decided.run_reason)
            await self._save(active)
            while active.unsubmitted:  # stored as Running: now, and only now, hand them over
                await self._submit(active, active.unsubmitted.pop(0))
            for name in decided.cancel:
                await self._executor.cancel(
                    StepKey(active.record.id, name, active.steps[name].attempt)
                )
            if finished:
                log.info("run finished", state=decided.run_state.value, reason=decided.run_reason)
                return
            if submits or decided.skip or decided.fail or decided.abandon:
                continue
            if not await self._wait(active, decided.wake_at):
                if not active.lost:
                    await self._save(active)
                return

    async def _submit(self, active: ActiveRun, spec: StepSpec) -> None:
        """Hand an attempt to the executor; one it refuses ends Failed (retries apply)."""
        try:
            await self._executor.submit(spec)
        except Exception as error:
            log.warning("step not submitted", step=spec.key.step, error=str(error))
            failed = replace(
                active.steps[spec.key.step],
                state=StepState.FAILED,
                finished_at=self._clock(),
                reason=f"the executor did not take the step: {error}",
            )
            active.change(spec.key.step, failed)
            await self._save(active)

    async def _save(self, active: ActiveRun) -> None:
        """Store what this turn learned and decided, in one transaction (state before acts)."""
        if not active.unsaved:
            return
        state = active.unsaved_state
        await self._store.save_progress(
            active.record.id,
            steps=list(active.unsaved_steps.values()),
            logs=active.unsaved_logs,
            run_state=(state[0].value, state[1]) if state else None,
            now=self._clock(),
        )
        if state is not None:
            active.record = replace(active.record, state=state[0].value, reason=state[1])
        active.unsaved_steps = {}
        active.unsaved_logs = []
        active.unsaved_state = None

    async def _wait(self, active: ActiveRun, wake_at: datetime | None) -> bool:
        """Wait for the next fact and record it (and any queued behind it); False on stop."""
        timeout = None
        if wake_at is not None and not self._stopping:
            timeout = max(0.0, (wake_at - self._clock()).total_seconds())
        try:
            async with asyncio.timeout(timeout):
                messages = [await active.inbox.get()]
        except TimeoutError:
            return True
        while not active.inbox.empty():
            messages.append(active.inbox.get_nowait())
        for message in messages:
            if isinstance(message, StepUpdate):
                await self._record_update(active, message)
            elif message == _STOP:
                return False
        return True

    async def _record_update(self, active: ActiveRun, update: StepUpdate) -> None:
        if active.record_update(update):
            text = "\n".join([line async for line in self._executor.logs(update.key)])
            active.unsaved_logs.append(StepLog(update.key.step, update.key.attempt, text))
            self._idle.set()
