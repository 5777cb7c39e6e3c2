"""The run controller: the async shell around `planning.plan`.

Each active run has one task that loops: plan -> store the transitions -> act on them
(submit, cancel) -> wait for a fact (a step update, a retry time, a cancel request). The
store is written before the executor is asked to act (promise 3), so after a crash the
controller resumes from the store: `start()` re-opens every unfinished run and asks the
executor to adopt the attempts the store says were running.

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

from eventflow.errors import ExpressionError
from eventflow.executors.protocol import Executor, StepKey, StepPhase, StepSpec, StepUpdate
from eventflow.resources.models import WorkflowSpec
from eventflow.runs.planning import CompiledWorkflow, Plan, plan, render_step
from eventflow.runs.states import RunState, StepState, StepStatus, render_failed_reason
from eventflow.store.records import RunFinishedError, RunRecord, StepLog, StepRecord, Store

log = structlog.get_logger()

_PHASE_STATES = {
    StepPhase.SUCCEEDED: StepState.SUCCEEDED,
    StepPhase.FAILED: StepState.FAILED,
    StepPhase.TIMED_OUT: StepState.TIMED_OUT,
    StepPhase.CANCELLED: StepState.CANCELLED,
}
_RETRY_FIRST_SECONDS = 0.5
_RETRY_MAX_SECONDS = 30.0
_STOP_SECONDS = 5.0
# Messages a run task receives besides step updates.
_WAKE = "wake"
_STOP = "stop"


def status_of(record: StepRecord) -> StepStatus:
    return StepStatus(
        state=StepState(record.state),
        attempt=record.attempt,
        started_at=record.started_at,
        finished_at=record.finished_at,
        exit_code=record.exit_code,
        reason=record.reason,
        outputs=record.outputs,
    )


def record_of(name: str, status: StepStatus, log_tail: str | None = None) -> StepRecord:
    return StepRecord(
        name=name,
        state=status.state.value,
        attempt=status.attempt,
        started_at=status.started_at,
        finished_at=status.finished_at,
        exit_code=status.exit_code,
        reason=status.reason,
        outputs=dict(status.outputs) if status.outputs is not None else None,
        log_tail=log_tail,
    )


class _ActiveRun:
    """The in-memory side of one run; the store remains the truth."""

    def __init__(self, record: RunRecord, workflow: CompiledWorkflow) -> None:
        self.record = record
        self.workflow = workflow
        self.steps: dict[str, StepStatus] = {step.name: status_of(step) for step in record.steps}
        for step in workflow.spec.steps:
            self.steps.setdefault(step.name, StepStatus())
        self.inbox: asyncio.Queue[StepUpdate | str] = asyncio.Queue()
        self.cancel_requested = record.cancel_requested
        # What this turn learned and decided, stored in one transaction before acting on it.
        self.unsaved_steps: dict[str, StepRecord] = {}
        self.unsaved_logs: list[StepLog] = []
        self.unsaved_state: tuple[RunState, str | None] | None = None
        self.unsubmitted: list[StepSpec] = []  # stored as Running, not yet given to the executor

    @property
    def run_info(self) -> dict[str, str]:
        return {
            "id": self.record.id,
            "trigger": self.record.trigger,
            "workflow": self.record.workflow,
            "eventId": self.record.event_id,
        }


class RunController:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        clock: Callable[[], datetime],
        concurrency_limits: Callable[[], Mapping[str, int | None]],
        step_labels: Callable[[RunRecord, str], Mapping[str, str]] | None = None,
    ) -> None:
        self._store = store
        self._executor = executor
        self._clock = clock
        self._limits = concurrency_limits
        self._active: dict[str, _ActiveRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiting: defaultdict[str, deque[RunRecord]] = defaultdict(deque)
        self._workflows: dict[str, CompiledWorkflow] = {}
        self._updates_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._step_labels = step_labels

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every unfinished run from the store, then watch the executor."""
        self._updates_task = asyncio.create_task(self._route_updates(), name="step-updates")
        unfinished = await self._store.unfinished_runs()
        running_keys: list[StepKey] = []
        for record in unfinished:
            if record.state == RunState.RUNNING.value:
                self._open(record)
                running_keys.extend(
                    StepKey(record.id, step.name, step.attempt)
                    for step in record.steps
                    if step.state == StepState.RUNNING.value
                )
        for record in unfinished:
            if record.state == RunState.PENDING.value:
                self.admit(record)
        if unfinished:
            log.info("runs resumed", runs=len(unfinished), steps_adopted=len(running_keys))
        if running_keys:
            await self._executor.adopt(running_keys)

    async def close(self, grace_seconds: float) -> None:
        """Start nothing new; give running steps `grace_seconds`, then stop them."""
        self._stopping = True
        for active in self._active.values():
            active.inbox.put_nowait(_WAKE)
        try:
            async with asyncio.timeout(grace_seconds):
                while any(self._running_steps(active) for active in self._active.values()):
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
            await self._store.set_run_state(
                run_id, RunState.CANCELLED.value, reason="cancelled by request", now=now
            )
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
        active = _ActiveRun(record, self._compiled(record.workflow_spec))
        self._active[record.id] = active
        self._tasks[record.id] = asyncio.create_task(self._drive(active), name=f"run-{record.id}")

    def _running_steps(self, active: _ActiveRun) -> list[str]:
        return [name for name, s in active.steps.items() if s.state is StepState.RUNNING]

    async def _route_updates(self) -> None:
        async for update in self._executor.updates():
            active = self._active.get(update.key.run_id)
            if active is None:
                log.warning("update for an unknown run", step=str(update.key))
                continue
            active.inbox.put_nowait(update)

    async def _drive(self, active: _ActiveRun) -> None:
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

    async def _loop(self, active: _ActiveRun) -> None:
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
            submits = self._apply(active, decided, now)
            active.unsubmitted.extend(submits)
            finished = decided.run_state.terminal and not self._running_steps(active)
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
                await self._save(active)
                return

    async def _submit(self, active: _ActiveRun, spec: StepSpec) -> None:
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
            self._change(active, spec.key.step, failed)
            await self._save(active)

    async def _save(self, active: _ActiveRun) -> None:
        """Store what this turn learned and decided, in one transaction (state before acts)."""
        if not (active.unsaved_steps or active.unsaved_logs or active.unsaved_state):
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

    def _change(
        self, active: _ActiveRun, name: str, status: StepStatus, tail: str | None = None
    ) -> None:
        active.steps[name] = status
        active.unsaved_steps[name] = record_of(name, status, tail)

    async def _wait(self, active: _ActiveRun, wake_at: datetime | None) -> bool:
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

    def _apply(self, active: _ActiveRun, decided: Plan, now: datetime) -> list[StepSpec]:
        """Take the plan's transitions into the run; return the attempts to submit."""
        endings = (
            (decided.skip, StepState.SKIPPED),
            (decided.fail, StepState.FAILED),
            (decided.abandon, StepState.CANCELLED),
        )
        for ended, state in endings:
            for name, reason in ended:
                ending = replace(active.steps[name], state=state, reason=reason, finished_at=now)
                self._change(active, name, ending)
        submits: list[StepSpec] = []
        if self._stopping or not decided.start:
            return submits
        context = active.workflow.context(active.record.arguments, active.run_info, active.steps)
        for name, attempt in decided.start:
            try:
                rendered = render_step(active.workflow, name, context)
            except ExpressionError as error:
                self._change(
                    active,
                    name,
                    StepStatus(
                        state=StepState.FAILED,
                        attempt=attempt,
                        started_at=now,
                        finished_at=now,
                        reason=render_failed_reason(str(error)),
                    ),
                )
                continue
            self._change(
                active, name, StepStatus(state=StepState.RUNNING, attempt=attempt, started_at=now)
            )
            log.info("step started", step=name, attempt=attempt)
            labels = self._step_labels(active.record, name) if self._step_labels else {}
            submits.append(
                StepSpec(
                    key=StepKey(active.record.id, name, attempt),
                    command=rendered.command,
                    args=rendered.args,
                    env=rendered.env,
                    image=rendered.image,
                    working_dir=rendered.working_dir,
                    timeout_seconds=rendered.timeout_seconds,
                    labels=labels,
                    annotations={"eventflow.io/event-id": active.record.event_id},
                    kubernetes=rendered.kubernetes,
                )
            )
        return submits

    async def _record_update(self, active: _ActiveRun, update: StepUpdate) -> None:
        name = update.key.step
        current = active.steps.get(name)
        if (
            current is None
            or current.attempt != update.key.attempt
            or current.state is not StepState.RUNNING
        ):
            log.debug("stale step update ignored", step=str(update.key))
            return
        if update.phase is StepPhase.RUNNING:
            return
        status = replace(
            current,
            state=_PHASE_STATES[update.phase],
            finished_at=update.at,
            exit_code=update.exit_code,
            reason=update.reason,
            outputs=update.outputs,
        )
        self._change(active, name, status, update.log_tail)
        text = "\n".join([line async for line in self._executor.logs(update.key)])
        active.unsaved_logs.append(StepLog(name, update.key.attempt, text))
        log.info(
            "step " + status.state.value.lower(),
            step=name,
            attempt=update.key.attempt,
            exit_code=update.exit_code,
            reason=update.reason,
        )
        self._idle.set()
