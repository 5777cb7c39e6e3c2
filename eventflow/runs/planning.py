"""DAG planning: the pure core of a run. Given the steps' statuses, what to do now.

The run controller loads a run, calls `plan`, stores the transitions, then acts on them.
`plan` does no I/O, reads time only from `now`, stores and runs nothing, and never waits:
`wake_at` says when to plan again if no new fact arrives before.

The rules, applied fully in one call (a whole chain of skips or abandons at once, so a
second call without a new fact changes nothing but repeating `cancel`):

- A step is *ready* when every `depends` step Succeeded or was Skipped because its own
  `when` was false. When a dependency ends in any other final way, the step is skipped
  with reason "upstream step 'x' failed" / "upstream step 'x' was cancelled"; a step
  skipped that way passes the same reason on to its own dependents.
- A ready step with a `when` has it evaluated on `step_context` of the final steps: false
  skips it ("when 'expr' is false"), an error fails it for good ("when 'expr' failed: ...";
  it never runs and is not retried). A ready step that finds no free slot stays Pending and
  has its `when` evaluated again on a later plan.
- A Failed/TimedOut attempt with retries left (attempt <= retries.limit) starts again as
  attempt + 1 once `now >= retry_at(...)`; until then it sets `wake_at`. A retry does not
  evaluate `when` again. Cancelled attempts are never retried.
- `parallelism` caps the Running steps, counting the ones this plan starts; candidates
  (new steps and due retries alike) take the free slots in the spec's step order.
- failFast (default): once a step finally failed or timed out (or its `when` failed in this
  very plan), every Running step is cancelled, every step not started (even one waiting for
  a retry) is abandoned with reason "not started: step 'x' failed", nothing starts; the run
  ends Failed, reason "step 'x' failed: <its reason>", when nothing is Running any more.
  `x` is the step that failed first (by `finished_at`, then spec order).
- failFast false: every step whose dependencies allow it runs; the run ends Failed when
  every step is final and one failed, timed out or was cancelled; else Succeeded.
- `cancel_requested`: cancel the Running steps, abandon the rest ("run cancelled"); the run
  ends Cancelled ("cancelled by request") once nothing is Running.
- The run is Running while any step is not final. Every list is in the spec's step order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from eventflow.errors import ConfigError, ExpressionError
from eventflow.expressions import Expression, Template, compile_expression, compile_template
from eventflow.resources.models import Retries, Step, WorkflowSpec
from eventflow.resources.scopes import STEP_VARIABLES
from eventflow.runs.states import (
    RunState,
    StepState,
    StepStatus,
    upstream_reason,
    when_failed_reason,
    when_false_reason,
)

_FAILED = (StepState.FAILED, StepState.TIMED_OUT)
_NEVER_STARTED = StepStatus()


@dataclass(frozen=True, slots=True)
class CompiledStep:
    """One step with its `when` and templates compiled, and where each one came from."""

    step: Step
    index: int
    when: Expression | None
    command: tuple[tuple[str, Template], ...]  # (field path, template)
    args: tuple[tuple[str, Template], ...]
    env: tuple[tuple[str, str, Template], ...]  # (variable, field path, template)
    working_dir: tuple[str, Template] | None
    retry_limit: int  # step.retries.limit, read on every plan for every step


@contextmanager
def _at(place: str) -> Iterator[None]:
    """Prefix an ExpressionError with the field path it comes from."""
    try:
        yield
    except ExpressionError as error:
        raise ExpressionError(f"{place}: {error}") from error


def _template(place: str, source: str) -> tuple[str, Template]:
    with _at(place):
        return place, compile_template(source, STEP_VARIABLES)


def _compile_step(spec: WorkflowSpec, index: int, step: Step) -> CompiledStep:
    place = f"spec.steps[{index}]"
    with _at(f"{place}.when"):
        when = None if step.when is None else compile_expression(step.when, STEP_VARIABLES)
    # Step env overrides workflow env, key by key; the path says which one a value came from.
    env_places = {key: f"spec.env.{key}" for key in spec.env}
    env_places |= {key: f"{place}.env.{key}" for key in step.env}
    env_values = spec.env | step.env
    return CompiledStep(
        step=step,
        index=index,
        when=when,
        command=tuple(_template(f"{place}.command[{i}]", s) for i, s in enumerate(step.command)),
        args=tuple(_template(f"{place}.args[{i}]", s) for i, s in enumerate(step.args)),
        env=tuple((key, *_template(env_places[key], value)) for key, value in env_values.items()),
        working_dir=None
        if step.workingDir is None
        else _template(f"{place}.workingDir", step.workingDir),
        retry_limit=step.retries.limit,
    )


def _topological_order(spec: WorkflowSpec) -> tuple[str, ...]:
    """Dependencies first, ties in spec order; bad names and cycles raise ConfigError."""
    names = [step.name for step in spec.steps]
    position: dict[str, int] = {}
    for index, name in enumerate(names):
        if position.setdefault(name, index) != index:
            raise ConfigError(f"spec.steps[{index}].name: {name!r} is used twice")
    for index, step in enumerate(spec.steps):
        for place, dependency in enumerate(step.depends):
            if dependency not in position:
                raise ConfigError(
                    f"spec.steps[{index}].depends[{place}]: {dependency!r} is not a step"
                    f" of this workflow; steps: {', '.join(names)}"
                )
    # Kahn's algorithm, always taking the ready step that comes first in the spec.
    waiting_on = {step.name: len(set(step.depends)) for step in spec.steps}
    dependents: dict[str, list[str]] = {name: [] for name in names}
    for step in spec.steps:
        for dependency in set(step.depends):
            dependents[dependency].append(step.name)
    ready = [position[name] for name, count in waiting_on.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for dependent in dependents[name]:
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) < len(names):
        placed = set(order)
        raise ConfigError(
            f"spec.steps: {', '.join(n for n in names if n not in placed)} depend on each other"
            " in a cycle (or on a step that does); `depends` must form a DAG"
        )
    return tuple(order)


@dataclass(frozen=True, slots=True)
class CompiledWorkflow:
    """A WorkflowTemplate spec ready to plan: expressions compiled, steps ordered."""

    spec: WorkflowSpec
    steps: Mapping[str, CompiledStep]  # in the spec's step order
    order: tuple[str, ...]  # topological: every step after its dependencies

    @classmethod
    def compile(cls, spec: WorkflowSpec) -> CompiledWorkflow:
        """Raise ExpressionError for a bad `when` or template, ConfigError for bad `depends`."""
        order = _topological_order(spec)
        steps = {step.name: _compile_step(spec, i, step) for i, step in enumerate(spec.steps)}
        return cls(spec=spec, steps=steps, order=order)

    def context(
        self, params: Mapping[str, str], run: Mapping[str, str], steps: Mapping[str, StepStatus]
    ) -> dict[str, Any]:
        """`step_context` of the final steps (not those waiting for a retry): what
        `render_step` needs at a start."""
        final = {
            name: status
            for name, status in steps.items()
            if name in self.steps and status.final(self.steps[name].retry_limit)
        }
        return step_context(params, run, final)


def step_context(
    params: Mapping[str, str], run: Mapping[str, str], steps: Mapping[str, StepStatus]
) -> dict[str, Any]:
    """The STEP_VARIABLES of templates and `when`, with every ended step given; call it
    through `CompiledWorkflow.context`, which leaves out the steps waiting for a retry."""
    return {
        "params": dict(params),
        "run": dict(run),
        "steps": {
            name: {
                "state": status.state.value,
                "exitCode": -1 if status.exit_code is None else status.exit_code,
                "outputs": dict(status.outputs or {}),
            }
            for name, status in steps.items()
            if status.state.terminal
        },
    }


@dataclass(frozen=True, slots=True)
class RenderedStep:
    command: list[str]
    args: list[str]
    env: dict[str, str]
    working_dir: str | None
    image: str | None
    timeout_seconds: float | None
    kubernetes: tuple[Mapping[str, Any], ...] = ()  # the workflow's, then the step's block


def _render(place: str, template: Template, context: Mapping[str, Any]) -> str:
    with _at(place):
        return template.render(context)


def render_step(workflow: CompiledWorkflow, name: str, context: Mapping[str, Any]) -> RenderedStep:
    """Render one step's templates on `context` (see `CompiledWorkflow.context`).

    Raise ExpressionError when a template fails. Store the step as Failed with reason
    `render_failed_reason(str(error))`: that marks the failure final, as rendering again
    would fail again.
    """
    compiled = workflow.steps[name]
    return RenderedStep(
        command=[_render(place, t, context) for place, t in compiled.command],
        args=[_render(place, t, context) for place, t in compiled.args],
        env={key: _render(place, t, context) for key, place, t in compiled.env},
        working_dir=None
        if compiled.working_dir is None
        else _render(*compiled.working_dir, context),
        image=compiled.step.image,
        timeout_seconds=compiled.step.timeout,
        kubernetes=workflow.spec.kubernetes_layers(compiled.step),
    )


def retry_at(retries: Retries, attempt: int, finished_at: datetime) -> datetime:
    """When attempt `attempt` + 1 may start: backoff * factor**(attempt-1), capped."""
    if attempt < 1:
        raise ValueError(f"attempt is counted from 1; got {attempt}")
    try:
        delay = min(retries.backoff * retries.factor ** (attempt - 1), retries.maxBackoff)
    except OverflowError:
        delay = retries.maxBackoff
    try:
        return finished_at + timedelta(seconds=delay)
    except OverflowError:
        return datetime.max.replace(tzinfo=finished_at.tzinfo)


@dataclass(frozen=True, slots=True)
class Plan:
    start: tuple[tuple[str, int], ...]  # (step, attempt number to start)
    skip: tuple[tuple[str, str], ...]  # (step, reason) -> Skipped
    fail: tuple[tuple[str, str], ...]  # (step, reason) -> Failed, finally
    cancel: tuple[str, ...]  # Running steps to cancel
    abandon: tuple[tuple[str, str], ...]  # (step, reason): not started -> Cancelled
    wake_at: datetime | None  # earliest pending retry: plan again then
    run_state: RunState
    run_reason: str | None  # why the run ended so; None while Running and on success


def _first_failure(
    workflow: CompiledWorkflow, current: Mapping[str, StepStatus], now: datetime
) -> str | None:
    failed = [
        (status.finished_at or now, workflow.steps[name].index, name)
        for name, status in current.items()
        if status.state in _FAILED and status.final(workflow.steps[name].retry_limit)
    ]
    return min(failed)[2] if failed else None


def _why(status: StepStatus) -> str:
    if status.reason or status.exit_code is None:
        return status.reason or ("timed out" if status.state is StepState.TIMED_OUT else "unknown")
    return f"exit code {status.exit_code}"


def _outcome(
    workflow: CompiledWorkflow,
    current: Mapping[str, StepStatus],
    now: datetime,
    cancel_requested: bool,
) -> tuple[RunState, str | None]:
    if any(not current[n].final(c.retry_limit) for n, c in workflow.steps.items()):
        return RunState.RUNNING, None
    if cancel_requested:
        return RunState.CANCELLED, "cancelled by request"
    failed = _first_failure(workflow, current, now)
    if failed is not None:
        return RunState.FAILED, f"step '{failed}' failed: {_why(current[failed])}"
    cancelled = next((n for n in workflow.steps if current[n].state is StepState.CANCELLED), None)
    if cancelled is not None:
        reason = current[cancelled].reason
        return RunState.FAILED, f"step '{cancelled}' was cancelled: {reason or 'unknown'}"
    return RunState.SUCCEEDED, None


def _blocked_by(
    workflow: CompiledWorkflow, name: str, current: Mapping[str, StepStatus]
) -> str | None:
    """Why the step can never run, when one of its dependencies ended without satisfying it."""
    for dependency in workflow.steps[name].step.depends:
        status = current[dependency]
        if status.state is StepState.SKIPPED and not status.skipped_by_condition:
            return status.reason or upstream_reason(dependency, cancelled=False)
        if status.state is StepState.CANCELLED:
            return upstream_reason(dependency, cancelled=True)
        if status.state in _FAILED and status.final(workflow.steps[dependency].retry_limit):
            return upstream_reason(dependency, cancelled=False)
    return None


def _first_move(
    workflow: CompiledWorkflow,
    name: str,
    current: Mapping[str, StepStatus],
    context: Callable[[], Mapping[str, Any]],
) -> tuple[StepState, str] | None:
    """A never-started step's next state and reason (Running: may start); None: not yet."""
    blocked = _blocked_by(workflow, name, current)
    if blocked is not None:
        return StepState.SKIPPED, blocked
    compiled = workflow.steps[name]
    if not all(current[d].satisfies_dependents for d in compiled.step.depends):
        return None
    if compiled.when is None:
        return StepState.RUNNING, ""
    try:
        holds = compiled.when.holds(context())
    except ExpressionError as error:
        return StepState.FAILED, when_failed_reason(compiled.when.source, str(error))
    if holds:
        return StepState.RUNNING, ""
    return StepState.SKIPPED, when_false_reason(compiled.when.source)


def plan(
    workflow: CompiledWorkflow,
    steps: Mapping[str, StepStatus],
    params: Mapping[str, str],
    run: Mapping[str, str],
    now: datetime,
    *,
    cancel_requested: bool = False,
) -> Plan:
    """Decide what to do with the run now; `steps` misses the steps never started."""
    current = {name: steps.get(name, _NEVER_STARTED) for name in workflow.steps}
    # `when` sees the final steps; built once, and again only after this plan ends a step.
    contexts: list[Mapping[str, Any]] = []

    def context() -> Mapping[str, Any]:
        if not contexts:
            contexts.append(workflow.context(params, run, current))
        return contexts[-1]

    skip: list[tuple[str, str]] = []
    fail: list[tuple[str, str]] = []
    candidates: list[tuple[str, int]] = []
    wake_at: datetime | None = None
    stopping = cancel_requested or (
        workflow.spec.failFast and _first_failure(workflow, current, now) is not None
    )
    for name in () if stopping else workflow.order:
        compiled, status = workflow.steps[name], current[name]
        if status.waiting_for_retry(compiled.retry_limit):
            ended = status.finished_at
            due = now if ended is None else retry_at(compiled.step.retries, status.attempt, ended)
            if now >= due:
                candidates.append((name, status.attempt + 1))
            else:
                wake_at = due if wake_at is None else min(wake_at, due)
            continue
        pending = status.state is StepState.PENDING
        move = _first_move(workflow, name, current, context) if pending else None
        if move is None:
            continue
        if move[0] is StepState.RUNNING:
            candidates.append((name, 1))
            continue
        (skip if move[0] is StepState.SKIPPED else fail).append((name, move[1]))
        current[name] = replace(status, state=move[0], reason=move[1], finished_at=now)
        contexts.clear()
        if fail and workflow.spec.failFast:
            break  # what is left is abandoned below, not skipped

    cancel: tuple[str, ...] = ()
    abandon: tuple[tuple[str, str], ...] = ()
    start: list[tuple[str, int]] = []
    culprit = _first_failure(workflow, current, now)
    if cancel_requested or (workflow.spec.failFast and culprit is not None):
        # Wind down: cancel what runs; abandon what has not started, retries included.
        reason = "run cancelled" if cancel_requested else f"not started: step '{culprit}' failed"
        cancel = tuple(n for n in workflow.steps if current[n].state is StepState.RUNNING)
        abandon = tuple(
            (name, reason)
            for name, compiled in workflow.steps.items()
            if current[name].state is not StepState.RUNNING
            and not current[name].final(compiled.retry_limit)
        )
        for name, _ in abandon:
            current[name] = replace(current[name], state=StepState.CANCELLED, reason=reason)
        wake_at = None
    else:
        running = sum(status.state is StepState.RUNNING for status in current.values())
        limit = workflow.spec.parallelism
        slots = len(candidates) if limit is None else max(limit - running, 0)
        start = sorted(candidates, key=lambda c: workflow.steps[c[0]].index)[:slots]
        for name, attempt in start:
            current[name] = replace(current[name], state=StepState.RUNNING, attempt=attempt)
    run_state, run_reason = _outcome(workflow, current, now, cancel_requested)
    return Plan(
        start=tuple(start),
        skip=tuple(sorted(skip, key=lambda item: workflow.steps[item[0]].index)),
        fail=tuple(sorted(fail, key=lambda item: workflow.steps[item[0]].index)),
        cancel=cancel,
        abandon=abandon,
        wake_at=wake_at,
        run_state=run_state,
        run_reason=run_reason,
    )
