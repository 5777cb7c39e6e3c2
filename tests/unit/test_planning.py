"""The DAG planner: readiness, `when`, retries, failFast, cancellation, rendering."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventflow.errors import ConfigError, ExpressionError
from eventflow.resources.models import Retries, WorkflowSpec
from eventflow.runs.planning import (
    CompiledWorkflow,
    Plan,
    RenderedStep,
    plan,
    render_step,
    retry_at,
    step_context,
)
from eventflow.runs.states import (
    RunState,
    StepState,
    StepStatus,
    render_failed_reason,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN = {"id": "r1", "trigger": "t", "workflow": "w", "eventId": "e1"}


def compiled(steps: list[dict[str, Any]], **spec: Any) -> CompiledWorkflow:
    return CompiledWorkflow.compile(WorkflowSpec.model_validate({"steps": steps, **spec}))


def step(name: str, *depends: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": ["true"], "depends": list(depends), **fields}


def running(attempt: int = 1) -> StepStatus:
    return StepStatus(StepState.RUNNING, attempt, started_at=T0)


def succeeded(attempt: int = 1, outputs: dict[str, Any] | None = None) -> StepStatus:
    return StepStatus(StepState.SUCCEEDED, attempt, T0, T0, 0, None, outputs)


def failed(attempt: int = 1, at: datetime = T0, state: StepState = StepState.FAILED) -> StepStatus:
    return StepStatus(state, attempt, T0, at, 1 if state is StepState.FAILED else None)


def planned(
    workflow: CompiledWorkflow,
    steps: dict[str, StepStatus] | None = None,
    now: datetime = T0,
    params: dict[str, str] | None = None,
    cancel_requested: bool = False,
) -> Plan:
    return plan(workflow, steps or {}, params or {}, RUN, now, cancel_requested=cancel_requested)


def outcome(
    start: tuple[tuple[str, int], ...] = (),
    skip: tuple[tuple[str, str], ...] = (),
    fail: tuple[tuple[str, str], ...] = (),
    cancel: tuple[str, ...] = (),
    abandon: tuple[tuple[str, str], ...] = (),
    wake_at: datetime | None = None,
    run_state: RunState = RunState.RUNNING,
    run_reason: str | None = None,
) -> Plan:
    return Plan(start, skip, fail, cancel, abandon, wake_at, run_state, run_reason)


CHAIN = compiled([step("a"), step("b", "a"), step("c", "b")])
DIAMOND = compiled([step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c")])


# --- states -----------------------------------------------------------------------------


def test_terminal_states_are_the_ended_ones() -> None:
    """Pending and Running are the only non-terminal step states; runs end in three states."""
    assert [s for s in StepState if not s.terminal] == [StepState.PENDING, StepState.RUNNING]
    assert [s for s in RunState if s.terminal] == [
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.CANCELLED,
    ]


@pytest.mark.parametrize(
    ("status", "limit", "waiting"),
    [
        (failed(1), 0, False),
        (failed(1), 1, True),
        (failed(2), 1, False),
        (failed(2), 2, True),
        (failed(1, state=StepState.TIMED_OUT), 1, True),
        (StepStatus(StepState.CANCELLED, 1), 3, False),
        (succeeded(), 3, False),
        (StepStatus(StepState.FAILED, 0, reason="when 'x' failed: boom"), 3, False),
        (StepStatus(StepState.FAILED, 1, reason=render_failed_reason("bad")), 3, False),
    ],
)
def test_waiting_for_retry_needs_a_failed_attempt_within_the_limit(
    status: StepStatus, limit: int, waiting: bool
) -> None:
    """Only Failed/TimedOut attempts that ran and have budget left wait for a retry."""
    assert status.waiting_for_retry(limit) is waiting
    assert status.final(limit) is (not waiting)


# --- readiness --------------------------------------------------------------------------


def test_linear_chain_runs_one_step_after_the_other() -> None:
    """A chain starts its head, waits for it, then starts the next step."""
    assert planned(CHAIN) == outcome(start=(("a", 1),))
    assert planned(CHAIN, {"a": running()}) == outcome()
    assert planned(CHAIN, {"a": succeeded()}) == outcome(start=(("b", 1),))
    done = {"a": succeeded(), "b": succeeded(), "c": succeeded()}
    assert planned(CHAIN, done) == outcome(run_state=RunState.SUCCEEDED)


def test_diamond_joins_only_when_both_branches_succeeded() -> None:
    """Both branches start together; the join waits for the slower one."""
    assert planned(DIAMOND, {"a": succeeded()}) == outcome(start=(("b", 1), ("c", 1)))
    half = {"a": succeeded(), "b": succeeded(), "c": running()}
    assert planned(DIAMOND, half) == outcome()
    both = {"a": succeeded(), "b": succeeded(), "c": succeeded()}
    assert planned(DIAMOND, both) == outcome(start=(("d", 1),))


def test_starts_follow_spec_order_not_dependency_order() -> None:
    """Lists come in the spec's step order even when a later step is ordered first."""
    workflow = compiled([step("late", "root"), step("early"), step("root")])
    assert workflow.order == ("early", "root", "late")
    assert planned(workflow) == outcome(start=(("early", 1), ("root", 1)))


def test_order_takes_the_first_ready_step_in_the_spec_each_time() -> None:
    """Dependencies first; among the steps ready at each point, the spec's first one."""
    workflow = compiled([step("d", "b", "c"), step("c"), step("b", "c", "c"), step("a")])
    assert workflow.order == ("c", "b", "d", "a")


def test_order_of_a_5000_step_chain_written_backwards() -> None:
    """The last step written runs first; ordering such a chain stays linear."""
    steps = [step(f"s{i}", f"s{i + 1}") for i in range(4999)] + [step("s4999")]
    assert compiled(steps).order == tuple(f"s{i}" for i in reversed(range(5000)))


def test_parallelism_caps_running_steps_in_fan_out() -> None:
    """With parallelism 2 only two of four ready steps start, counting those running."""
    workflow = compiled([step("root"), *(step(f"s{i}", "root") for i in range(4))], parallelism=2)
    assert planned(workflow, {"root": succeeded()}) == outcome(start=(("s0", 1), ("s1", 1)))
    later = {"root": succeeded(), "s0": succeeded(), "s1": running()}
    assert planned(workflow, later) == outcome(start=(("s2", 1),))
    full = {"root": succeeded(), "s0": running(), "s1": running()}
    assert planned(workflow, full) == outcome()


def test_without_parallelism_every_ready_step_starts_beside_running_ones() -> None:
    """No parallelism means no cap, however many steps already run."""
    workflow = compiled([step("a"), step("b"), step("c", "a"), step("d", "a")])
    steps = {"a": succeeded(), "b": running()}
    assert planned(workflow, steps) == outcome(start=(("c", 1), ("d", 1)))


# --- when -------------------------------------------------------------------------------


GATED = compiled(
    [step("a"), step("b", "a", when='params.go == "yes"'), step("c", "b")], failFast=False
)


def test_true_when_starts_the_step() -> None:
    """A `when` that holds lets the step start."""
    assert planned(GATED, {"a": succeeded()}, params={"go": "yes"}) == outcome(start=(("b", 1),))


def test_false_when_skips_and_its_dependents_still_run_in_the_same_plan() -> None:
    """Skipped by condition counts as satisfied: the dependent starts in the same call."""
    assert planned(GATED, {"a": succeeded()}, params={"go": "no"}) == outcome(
        start=(("c", 1),), skip=(("b", "when 'params.go == \"yes\"' is false"),)
    )


def test_failing_when_fails_the_step_for_good_and_skips_dependents() -> None:
    """A `when` that errors fails the step without retry; dependents are skipped."""
    result = planned(GATED, {"a": succeeded()})
    reason = "when 'params.go == \"yes\"' failed: 'params.go == \"yes\"': no such key: go"
    assert result == outcome(
        fail=(("b", reason),),
        skip=(("c", "upstream step 'b' failed"),),
        run_state=RunState.FAILED,
        run_reason=f"step 'b' failed: {reason}",
    )


def test_non_boolean_when_fails_the_step() -> None:
    """A `when` that gives a string is an error, not a truthy value."""
    workflow = compiled([step("a", when="params.go")])
    reason = (
        "when 'params.go' failed: 'params.go': a condition must give true or false,"
        " it gave str 'yes'"
    )
    assert planned(workflow, params={"go": "yes"}) == outcome(
        fail=(("a", reason),), run_state=RunState.FAILED, run_reason=f"step 'a' failed: {reason}"
    )


def test_when_sees_outputs_of_finished_steps() -> None:
    """`steps.<name>` in a `when` holds the state, exit code and outputs of ended steps."""
    workflow = compiled(
        [
            step("a"),
            step("b", "a", when='steps.a.outputs.n == 3 && steps.a.state == "Succeeded"'),
        ]
    )
    assert planned(workflow, {"a": succeeded(outputs={"n": 3})}) == outcome(start=(("b", 1),))


def test_failing_when_with_fail_fast_cancels_the_rest_in_the_same_plan() -> None:
    """A `when` error under failFast cancels running steps and abandons the others at once."""
    workflow = compiled([step("a"), step("b"), step("c", "a", when="params.x"), step("d", "c")])
    result = planned(workflow, {"a": succeeded(), "b": running()})
    reason = "when 'params.x' failed: 'params.x': no such key: x"
    assert result == outcome(
        fail=(("c", reason),),
        cancel=("b",),
        abandon=(("d", "not started: step 'c' failed"),),
    )


# --- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retries", "attempt", "seconds"),
    [
        ({"backoff": "10s"}, 1, 10),
        ({"backoff": "10s"}, 2, 20),
        ({"backoff": "10s"}, 3, 40),
        ({"backoff": "10s", "factor": 3}, 3, 90),
        ({"backoff": "10s", "factor": 1}, 5, 10),
        ({"backoff": "10s", "maxBackoff": "30s"}, 3, 30),
        ({"backoff": "10s", "maxBackoff": "30s"}, 2, 20),
        ({"backoff": 0}, 4, 0),
        ({"backoff": "1s", "factor": 1e300, "maxBackoff": "1h"}, 100, 3600),
    ],
)
def test_retry_backoff_grows_by_factor_and_is_capped(
    retries: dict[str, Any], attempt: int, seconds: float
) -> None:
    """retry_at is backoff * factor**(attempt-1) after the end, at most maxBackoff."""
    policy = Retries.model_validate({"limit": 100, **retries})
    assert retry_at(policy, attempt, T0) == T0 + timedelta(seconds=seconds)


def test_retry_at_rejects_an_attempt_that_never_ran() -> None:
    """Attempt numbers start at 1."""
    with pytest.raises(ValueError, match=r"^attempt is counted from 1; got 0$"):
        retry_at(Retries(), 0, T0)


def test_retry_beyond_any_date_gives_the_last_date() -> None:
    """A backoff past year 9999 waits forever instead of crashing the planner."""
    policy = Retries.model_validate({"backoff": 1e15, "maxBackoff": 1e15})
    assert retry_at(policy, 1, T0) == datetime.max.replace(tzinfo=UTC)


RETRIED = compiled(
    [step("a", retries={"limit": 2, "backoff": "10s"}), step("b", "a")], failFast=True
)


@pytest.mark.parametrize("state", [StepState.FAILED, StepState.TIMED_OUT])
def test_failed_attempt_waits_for_its_backoff_then_retries(state: StepState) -> None:
    """Before the backoff the plan only sets wake_at; at it, the next attempt starts."""
    first = {"a": failed(1, state=state)}
    assert planned(RETRIED, first, now=T0 + timedelta(seconds=9)) == outcome(
        wake_at=T0 + timedelta(seconds=10)
    )
    assert planned(RETRIED, first, now=T0 + timedelta(seconds=10)) == outcome(start=(("a", 2),))
    second = {"a": failed(2, state=state)}
    assert planned(RETRIED, second, now=T0) == outcome(wake_at=T0 + timedelta(seconds=20))


def test_wake_at_is_the_earliest_pending_retry() -> None:
    """With two steps waiting, the plan wakes for the sooner one."""
    workflow = compiled(
        [step("a", retries={"limit": 1, "backoff": "30s"}), step("b", retries={"limit": 1})]
    )
    result = planned(workflow, {"a": failed(1), "b": failed(1, at=T0 + timedelta(seconds=5))})
    assert result == outcome(wake_at=T0 + timedelta(seconds=15))


def test_retry_without_end_time_is_due_at_once() -> None:
    """An attempt stored without finished_at is retried now rather than never."""
    status = replace(failed(1), finished_at=None)
    assert planned(RETRIED, {"a": status}) == outcome(start=(("a", 2),))


def test_used_up_retries_fail_the_run() -> None:
    """Once the last attempt fails, dependents are abandoned and the run fails."""
    result = planned(RETRIED, {"a": failed(3)})
    assert result == outcome(
        abandon=(("b", "not started: step 'a' failed"),),
        run_state=RunState.FAILED,
        run_reason="step 'a' failed: exit code 1",
    )


def test_due_retries_share_parallelism_with_new_steps_in_spec_order() -> None:
    """A due retry and a ready step compete for the one free slot by spec order."""
    workflow = compiled(
        [step("a"), step("b", retries={"limit": 1, "backoff": 0}), step("c")], parallelism=2
    )
    result = planned(workflow, {"a": running(), "b": failed(1)})
    assert result == outcome(start=(("b", 2),))


# --- failure handling -------------------------------------------------------------------


def test_fail_fast_cancels_running_and_abandons_everything_not_started() -> None:
    """failFast cancels running steps, abandons pending ones and those awaiting a retry."""
    workflow = compiled([step("a"), step("b"), step("c", retries={"limit": 3}), step("d", "b")])
    steps = {"a": failed(1), "b": running(), "c": failed(1)}
    abandon = "not started: step 'a' failed"
    assert planned(workflow, steps) == outcome(
        cancel=("b",), abandon=(("c", abandon), ("d", abandon))
    )
    ended = {
        "a": failed(1),
        "b": StepStatus(StepState.CANCELLED, 1),
        "c": StepStatus(StepState.CANCELLED, 1, reason=abandon),
        "d": StepStatus(StepState.CANCELLED, reason=abandon),
    }
    assert planned(workflow, ended) == outcome(
        run_state=RunState.FAILED, run_reason="step 'a' failed: exit code 1"
    )


def test_run_reason_says_unknown_when_a_step_gave_no_reason() -> None:
    """A failed step with neither reason nor exit code, or a bare cancel, reads 'unknown'."""
    workflow = compiled([step("a")])
    bare = StepStatus(StepState.FAILED, 1, T0, T0)
    assert planned(workflow, {"a": bare}).run_reason == "step 'a' failed: unknown"
    cancelled = StepStatus(StepState.CANCELLED, 1)
    assert planned(workflow, {"a": cancelled}).run_reason == "step 'a' was cancelled: unknown"


def test_fail_fast_blames_the_step_that_failed_first() -> None:
    """Of two failures the earlier one by finished_at is named, whatever the spec order."""
    workflow = compiled([step("a"), step("b")])
    late = StepStatus(StepState.FAILED, 1, T0, T0 + timedelta(seconds=1), reason="late")
    early = StepStatus(StepState.TIMED_OUT, 1, T0, T0)
    assert planned(workflow, {"a": late, "b": early}) == outcome(
        run_state=RunState.FAILED, run_reason="step 'b' failed: timed out"
    )


def test_without_fail_fast_independent_steps_continue_and_dependents_skip_in_one_plan() -> None:
    """failFast false skips the whole chain below a failure and keeps the rest going."""
    workflow = compiled(
        [step("a"), step("b", "a"), step("c", "b"), step("d", "c"), step("e")], failFast=False
    )
    result = planned(workflow, {"a": failed(1)})
    skipped = "upstream step 'a' failed"
    assert result == outcome(
        start=(("e", 1),), skip=(("b", skipped), ("c", skipped), ("d", skipped))
    )
    ended = {
        "a": failed(1),
        **{n: StepStatus(StepState.SKIPPED, reason=skipped) for n in "bcd"},
        "e": succeeded(),
    }
    assert planned(workflow, ended) == outcome(
        run_state=RunState.FAILED, run_reason="step 'a' failed: exit code 1"
    )


def test_cancelled_dependency_skips_dependents_and_fails_the_run() -> None:
    """A step cancelled from outside blocks its dependents; the run ends Failed."""
    workflow = compiled([step("a"), step("b", "a")])
    gone = StepStatus(StepState.CANCELLED, 1, reason="job deleted")
    assert planned(workflow, {"a": gone}) == outcome(
        skip=(("b", "upstream step 'a' was cancelled"),),
        run_state=RunState.FAILED,
        run_reason="step 'a' was cancelled: job deleted",
    )


def test_cancel_request_cancels_running_and_abandons_the_rest() -> None:
    """A cancelled run stops its steps, starts nothing and ends Cancelled when all stopped."""
    steps = {"a": succeeded(), "b": running()}
    assert planned(DIAMOND, steps, cancel_requested=True) == outcome(
        cancel=("b",), abandon=(("c", "run cancelled"), ("d", "run cancelled"))
    )
    stopped = {
        "a": succeeded(),
        "b": StepStatus(StepState.CANCELLED, 1),
        "c": StepStatus(StepState.CANCELLED, reason="run cancelled"),
        "d": StepStatus(StepState.CANCELLED, reason="run cancelled"),
    }
    assert planned(DIAMOND, stopped, cancel_requested=True) == outcome(
        run_state=RunState.CANCELLED, run_reason="cancelled by request"
    )


def test_cancel_request_drops_a_pending_retry() -> None:
    """A step waiting for a retry is abandoned on cancel; no wake-up is asked for."""
    assert planned(RETRIED, {"a": failed(1)}, cancel_requested=True) == outcome(
        abandon=(("a", "run cancelled"), ("b", "run cancelled")),
        run_state=RunState.CANCELLED,
        run_reason="cancelled by request",
    )


# --- context and rendering --------------------------------------------------------------


def test_step_context_lists_ended_steps_only() -> None:
    """Ended steps appear with state, exit code (-1 if unknown) and outputs ({} if none)."""
    steps = {
        "a": succeeded(outputs={"k": "v"}),
        "b": StepStatus(StepState.SKIPPED, reason="when 'x' is false"),
        "c": running(),
        "d": StepStatus(),
    }
    assert step_context({"p": "1"}, RUN, steps) == {
        "params": {"p": "1"},
        "run": RUN,
        "steps": {
            "a": {"state": "Succeeded", "exitCode": 0, "outputs": {"k": "v"}},
            "b": {"state": "Skipped", "exitCode": -1, "outputs": {}},
        },
    }


def test_workflow_context_leaves_out_steps_waiting_for_a_retry() -> None:
    """A failed attempt with retries left is not yet a final Failed step."""
    context = RETRIED.context({}, RUN, {"a": failed(1), "b": StepStatus()})
    assert context["steps"] == {}
    assert RETRIED.context({}, RUN, {"a": failed(3)})["steps"] == {
        "a": {"state": "Failed", "exitCode": 1, "outputs": {}}
    }


RENDERED = compiled(
    [
        step("a"),
        {
            "name": "b",
            "depends": ["a"],
            "image": "python:3.12",
            "command": ["python", "-m", "{{ params.module }}"],
            "args": ["--rows={{ steps.a.outputs.rows }}", "{{ run.id }}"],
            "env": {"LEVEL": "step", "ONLY_STEP": "{{ steps.a.exitCode }}"},
            "workingDir": "/data/{{ params.module }}",
            "timeout": "1m",
        },
    ],
    env={"LEVEL": "workflow", "ONLY_WORKFLOW": "w"},
)


def test_render_step_fills_params_outputs_and_env_with_step_precedence() -> None:
    """Templates see params, outputs and run; step env overrides workflow env."""
    context = RENDERED.context({"module": "etl"}, RUN, {"a": succeeded(outputs={"rows": 7})})
    assert render_step(RENDERED, "b", context) == RenderedStep(
        command=["python", "-m", "etl"],
        args=["--rows=7", "r1"],
        env={"LEVEL": "step", "ONLY_WORKFLOW": "w", "ONLY_STEP": "0"},
        working_dir="/data/etl",
        image="python:3.12",
        timeout_seconds=60.0,
    )


def test_render_step_without_templates_keeps_literals() -> None:
    """A step without templates renders as written, with no working dir nor image."""
    assert render_step(RENDERED, "a", RENDERED.context({}, RUN, {})) == RenderedStep(
        ["true"], [], {"LEVEL": "workflow", "ONLY_WORKFLOW": "w"}, None, None, None
    )


def test_render_step_names_the_field_of_a_failing_template() -> None:
    """A template failing on the context raises with the field path and the CEL message."""
    context = RENDERED.context({"module": "etl"}, RUN, {"a": succeeded()})
    with pytest.raises(ExpressionError) as raised:
        render_step(RENDERED, "b", context)
    assert str(raised.value) == ("spec.steps[1].args[0]: 'steps.a.outputs.rows': no such key: rows")


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            {"steps": [step("a", when="nope == 1")]},
            ExpressionError,
            "spec.steps[0].when: 'nope == 1' refers to nope, which is not defined here;"
            " available: params, run, steps",
        ),
        (
            {"steps": [step("a", args=["{{ events.x }}"])]},
            ExpressionError,
            "spec.steps[0].args[0]: 'events.x' refers to events, which is not defined here;"
            " available: params, run, steps",
        ),
        (
            {"steps": [step("a")], "env": {"X": "{{ params.x"}},
            ExpressionError,
            "spec.env.X: '{{ params.x': '{{' without a closing '}}'",
        ),
        (
            {"steps": [step("a", "ghost")]},
            ConfigError,
            "spec.steps[0].depends[0]: 'ghost' is not a step of this workflow; steps: a",
        ),
        (
            {"steps": [step("a"), step("a")]},
            ConfigError,
            "spec.steps[1].name: 'a' is used twice",
        ),
        (
            {"steps": [step("a", "b"), step("b", "a"), step("c", "b"), step("d")]},
            ConfigError,
            "spec.steps: a, b, c depend on each other in a cycle (or on a step that does);"
            " `depends` must form a DAG",
        ),
    ],
)
def test_compile_rejects_bad_templates_and_graphs(
    spec: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Compiling names the field path and what is wrong with it."""
    with pytest.raises(error) as raised:
        CompiledWorkflow.compile(WorkflowSpec.model_validate(spec))
    assert str(raised.value) == message


# --- random DAGs through random outcomes ------------------------------------------------

WHENS = [None, "true", "false", "params.missing"]
ENDINGS = [StepState.SUCCEEDED, StepState.FAILED, StepState.TIMED_OUT]


@st.composite
def workflow_specs(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(1, 6))
    steps = []
    for i in range(count):
        depends = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        when = draw(st.sampled_from(WHENS))
        steps.append(
            {
                "name": f"s{i}",
                "command": ["true"],
                "depends": [f"s{d}" for d in depends],
                "retries": {
                    "limit": draw(st.integers(0, 2)),
                    "backoff": draw(st.sampled_from([0, 5])),
                },
                **({"when": when} if when else {}),
            }
        )
    return {
        "steps": draw(st.permutations(steps)),
        "failFast": draw(st.booleans()),
        "parallelism": draw(st.none() | st.integers(1, 3)),
    }


def _apply(statuses: dict[str, StepStatus], decided: Plan, now: datetime) -> None:
    changes = [
        *((n, StepState.SKIPPED, r) for n, r in decided.skip),
        *((n, StepState.FAILED, r) for n, r in decided.fail),
        *((n, StepState.CANCELLED, r) for n, r in decided.abandon),
    ]
    for name, state, reason in changes:
        statuses[name] = replace(
            statuses.get(name, StepStatus()), state=state, reason=reason, finished_at=now
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=workflow_specs(), data=st.data())
def test_random_dags_reach_a_terminal_state_keeping_every_invariant(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    """Any DAG under any outcomes ends, within parallelism, respecting dependencies."""
    workflow = CompiledWorkflow.compile(WorkflowSpec.model_validate(spec))
    depends = {s["name"]: s["depends"] for s in spec["steps"]}
    limits = {s["name"]: s["retries"]["limit"] for s in spec["steps"]}
    cancel_from = data.draw(st.none() | st.integers(0, 12))
    statuses: dict[str, StepStatus] = {}
    now = T0
    for iteration in range(100):
        cancel = cancel_from is not None and iteration >= cancel_from
        decided = plan(workflow, statuses, {}, RUN, now, cancel_requested=cancel)
        _apply(statuses, decided, now)
        for name, attempt in decided.start:
            assert all(statuses[d].satisfies_dependents for d in depends[name])
            assert attempt == statuses.get(name, StepStatus()).attempt + 1 <= limits[name] + 1
            statuses[name] = StepStatus(StepState.RUNNING, attempt, started_at=now)
        running = [n for n in workflow.steps if statuses.get(n, StepStatus()).state == "Running"]
        assert len(running) <= (spec["parallelism"] or len(running))
        again = plan(workflow, statuses, {}, RUN, now, cancel_requested=cancel)
        assert again == replace(decided, start=(), skip=(), fail=(), abandon=())
        if decided.run_state.terminal:
            break
        assert decided.run_state is RunState.RUNNING
        now += timedelta(seconds=1)
        if running:
            name = data.draw(st.sampled_from(running))
            endings = [StepState.CANCELLED, *ENDINGS] if decided.cancel else ENDINGS
            ending = data.draw(st.sampled_from(endings))
            statuses[name] = replace(statuses[name], state=ending, finished_at=now)
        else:
            assert decided.wake_at is not None
            now = max(now, decided.wake_at)
    else:
        pytest.fail("the run did not end within 100 plans")
    final = [statuses[n] for n in workflow.steps]
    assert not running
    assert all(s.final(limits[n]) for n, s in zip(workflow.steps, final, strict=True))
    ended_badly = any(s.state in ("Failed", "TimedOut", "Cancelled") for s in final)
    expected = (
        RunState.CANCELLED if cancel else RunState.FAILED if ended_badly else RunState.SUCCEEDED
    )
    assert decided.run_state is expected
