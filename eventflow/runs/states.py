"""The states of a run and of its steps, as the store keeps them and the planner reads them.

A step's state is the state of its latest attempt. Two facts the planner needs are not
states of their own but follow from a `StepStatus` alone, so that they survive a restart:

- a Failed/TimedOut step whose retry budget is not used up is *waiting for a retry*, not
  finally failed; a failure the planner or renderer decided (a `when` or a template that
  failed) is never retried, and neither is a Cancelled attempt;
- a Skipped step was skipped either because its `when` was false (its dependents may run)
  or because an upstream step failed (its dependents are skipped too).

Both are told apart by the reason texts built here, which are stored and come back. This
module holds data and those rules only; what to do next is `planning.py`'s business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class StepState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    CANCELLED = "Cancelled"
    TIMED_OUT = "TimedOut"

    @property
    def terminal(self) -> bool:
        """The latest attempt has ended (it may still be retried: see `StepStatus.final`)."""
        return self not in (StepState.PENDING, StepState.RUNNING)


class RunState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


_WHEN_PREFIX = "when '"
_RENDER_PREFIX = "could not render the step: "
_UPSTREAM_PREFIX = "upstream step '"


def when_false_reason(expression: str) -> str:
    return f"{_WHEN_PREFIX}{expression}' is false"


def when_failed_reason(expression: str, message: str) -> str:
    return f"{_WHEN_PREFIX}{expression}' failed: {message}"


def render_failed_reason(message: str) -> str:
    """Reason of a step whose command, args, env or workingDir could not be rendered."""
    return f"{_RENDER_PREFIX}{message}"


def upstream_reason(step: str, cancelled: bool) -> str:
    return f"{_UPSTREAM_PREFIX}{step}' {'was cancelled' if cancelled else 'failed'}"


@dataclass(frozen=True, slots=True)
class StepStatus:
    """What the store knows of one step: its latest attempt."""

    state: StepState = StepState.PENDING
    attempt: int = 0  # number of the latest attempt; 0 = never started
    started_at: datetime | None = None
    finished_at: datetime | None = None  # end of the latest attempt
    exit_code: int | None = None
    reason: str | None = None
    outputs: Mapping[str, Any] | None = None

    @property
    def _failed_before_running(self) -> bool:
        reason = self.reason or ""
        return reason.startswith((_WHEN_PREFIX, _RENDER_PREFIX))

    def waiting_for_retry(self, retry_limit: int) -> bool:
        """A failed or timed-out attempt that the step's `retries.limit` allows to repeat."""
        return (
            self.state in (StepState.FAILED, StepState.TIMED_OUT)
            and 1 <= self.attempt <= retry_limit
            and not self._failed_before_running
        )

    def final(self, retry_limit: int) -> bool:
        """Nothing more will happen to this step."""
        return self.state.terminal and not self.waiting_for_retry(retry_limit)

    @property
    def skipped_by_condition(self) -> bool:
        """Skipped because its own `when` was false: its dependents may still run."""
        return self.state is StepState.SKIPPED and (self.reason or "").startswith(_WHEN_PREFIX)

    @property
    def satisfies_dependents(self) -> bool:
        return self.state is StepState.SUCCEEDED or self.skipped_by_condition
