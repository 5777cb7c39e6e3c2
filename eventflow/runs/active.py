"""The in-memory side of one run the controller drives, and how facts and plans change it.

An `ActiveRun` holds the steps' statuses as the store last had them plus what the current
turn learned (a step update) and decided (a plan's transitions), kept as unsaved records
until the controller stores them in one transaction. Nothing here does I/O: the controller
(`runner.py`) stores, submits and waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime

import structlog

from eventflow.errors import ExpressionError
from eventflow.executors.protocol import StepKey, StepPhase, StepSpec, StepUpdate
from eventflow.runs.planning import CompiledWorkflow, Plan, render_step
from eventflow.runs.states import RunState, StepState, StepStatus, render_failed_reason
from eventflow.store.records import RunRecord, StepLog, StepRecord

log = structlog.get_logger()

StepLabels = Callable[[RunRecord, str], Mapping[str, str]]

_PHASE_STATES = {
    StepPhase.SUCCEEDED: StepState.SUCCEEDED,
    StepPhase.FAILED: StepState.FAILED,
    StepPhase.TIMED_OUT: StepState.TIMED_OUT,
    StepPhase.CANCELLED: StepState.CANCELLED,
}


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


class ActiveRun:
    """One run being driven; the store remains the truth."""

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
        self.lost = False  # leased to another replica now: nothing more is stored or done

    @property
    def run_info(self) -> dict[str, str]:
        return {
            "id": self.record.id,
            "trigger": self.record.trigger,
            "workflow": self.record.workflow,
            "eventId": self.record.event_id,
        }

    @property
    def unsaved(self) -> bool:
        return bool(self.unsaved_steps or self.unsaved_logs or self.unsaved_state)

    def running_steps(self) -> list[str]:
        return [name for name, status in self.steps.items() if status.state is StepState.RUNNING]

    def change(self, name: str, status: StepStatus, tail: str | None = None) -> None:
        self.steps[name] = status
        self.unsaved_steps[name] = record_of(name, status, tail)

    def record_update(self, update: StepUpdate) -> bool:
        """Take an executor's report of an attempt's end; False when it changes nothing (an
        attempt still running, or a stale report of an attempt already replaced or ended)."""
        name = update.key.step
        current = self.steps.get(name)
        if (
            current is None
            or current.attempt != update.key.attempt
            or current.state is not StepState.RUNNING
        ):
            log.debug("stale step update ignored", step=str(update.key))
            return False
        if update.phase is StepPhase.RUNNING:
            return False
        status = replace(
            current,
            state=_PHASE_STATES[update.phase],
            finished_at=update.at,
            exit_code=update.exit_code,
            reason=update.reason,
            outputs=update.outputs,
        )
        self.change(name, status, update.log_tail)
        log.info(
            "step " + status.state.value.lower(),
            step=name,
            attempt=update.key.attempt,
            exit_code=update.exit_code,
            reason=update.reason,
        )
        return True


def apply_plan(
    active: ActiveRun,
    decided: Plan,
    now: datetime,
    *,
    starting: bool,
    step_labels: StepLabels | None,
) -> list[StepSpec]:
    """Take the plan's transitions into the run; return the attempts to submit (none when
    not `starting`: the controller is closing)."""
    endings = (
        (decided.skip, StepState.SKIPPED),
        (decided.fail, StepState.FAILED),
        (decided.abandon, StepState.CANCELLED),
    )
    for ended, state in endings:
        for name, reason in ended:
            ending = replace(active.steps[name], state=state, reason=reason, finished_at=now)
            active.change(name, ending)
    submits: list[StepSpec] = []
    if not starting or not decided.start:
        return submits
    context = active.workflow.context(active.record.arguments, active.run_info, active.steps)
    for name, attempt in decided.start:
        try:
            rendered = render_step(active.workflow, name, context)
        except ExpressionError as error:
            failed = StepStatus(
                state=StepState.FAILED,
                attempt=attempt,
                started_at=now,
                finished_at=now,
                reason=render_failed_reason(str(error)),
            )
            active.change(name, failed)
            continue
        active.change(name, StepStatus(state=StepState.RUNNING, attempt=attempt, started_at=now))
        log.info("step started", step=name, attempt=attempt)
        labels = step_labels(active.record, name) if step_labels else {}
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
