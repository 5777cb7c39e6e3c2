"""The Executor seam between the run controller and whatever runs a step.

The controller has already stored the attempt as Running when it calls `submit`
(state before side effects), so `submit` must be idempotent by `StepKey`: submitting a key
that is already running or finished changes nothing. Every submitted attempt ends in exactly
one terminal `StepUpdate` on `updates()`.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

OUTPUT_FILE_ENV = "EVENTFLOW_OUTPUT_FILE"


@dataclass(frozen=True, slots=True, order=True)
class StepKey:
    """One attempt of one step of one run: the executor's idempotency key."""

    run_id: str
    step: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.run_id}/{self.step}#{self.attempt}"


@dataclass(frozen=True, slots=True)
class StepSpec:
    """Everything an executor needs to run one attempt; all templates already rendered."""

    key: StepKey
    command: Sequence[str]
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    working_dir: str | None = None
    timeout_seconds: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # The `kubernetes:` blocks that apply, the workflow's then the step's, as written in YAML:
    # the Kubernetes executor lays them over its installation defaults; others ignore them.
    kubernetes: Sequence[Mapping[str, Any]] = ()


class StepPhase(enum.StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self is not StepPhase.RUNNING


@dataclass(frozen=True, slots=True)
class StepUpdate:
    """What the executor observed about one attempt."""

    key: StepKey
    phase: StepPhase
    at: datetime
    exit_code: int | None = None
    reason: str | None = None
    outputs: Mapping[str, Any] | None = None
    log_tail: str | None = None


class Executor(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None:
        """Stop watching. An executor whose attempts die with eventflow (local processes)
        stops them and reports each as FAILED; one whose attempts outlive it (Kubernetes
        Jobs) leaves them to `adopt` after a restart. `updates()` ends after that."""
        ...

    async def submit(self, step: StepSpec) -> None: ...

    def updates(self) -> AsyncIterator[StepUpdate]: ...

    async def cancel(self, key: StepKey) -> None: ...

    def logs(self, key: StepKey, follow: bool = False) -> AsyncIterator[str]: ...

    async def adopt(self, keys: Sequence[StepKey]) -> None:
        """After a restart: resume watching `keys`, which the store says are running.

        An attempt the executor cannot find any more yields a terminal FAILED update whose
        reason says so, so that no attempt stays Running forever.
        """
        ...
