"""The run controller against a real store, with injected faults, and the same DAGs run on
both executors: local processes, and Kubernetes Jobs on the API emulator whose kubelet runs
each Job's container as a local process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventflow.events import Event, ReceivedEvent
from eventflow.executors.kubernetes import KubernetesExecutor
from eventflow.executors.local import LocalExecutor
from eventflow.executors.manifests import JobOptions
from eventflow.executors.protocol import Executor, StepSpec
from eventflow.resources.models import WorkflowSpec
from eventflow.runs.runner import RunController
from eventflow.store.records import NewRun, RunRecord
from eventflow.store.sql import SqlStore
from tests.k8s_emulator import running_emulator
from tests.k8s_kubelet import Kubelet

pytestmark = pytest.mark.timeout(30)

SPEC = WorkflowSpec.model_validate(
    {
        "steps": [
            {"name": "first", "command": ["python3", "-c", "print('one')"]},
            {
                "name": "second",
                "depends": ["first"],
                "command": ["python3", "-c", "print('two')"],
                "retries": {"limit": 1, "backoff": 0},
            },
        ]
    }
)


class FlakyStore:
    """A real store whose next `failures` progress writes fail, as a lost database would."""

    def __init__(self, store: SqlStore, failures: int) -> None:
        self.store = store
        self.failures = failures

    async def save_progress(self, run_id: str, **changes: Any) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database is gone")
        await self.store.save_progress(run_id, **changes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class RefusingExecutor(LocalExecutor):
    """A real local executor that refuses its first submit, as an API server at its limit."""

    refused = False

    async def submit(self, step: StepSpec) -> None:
        if not self.refused:
            self.refused = True
            raise ConnectionError("API server unavailable")
        await super().submit(step)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path}/eventflow.db")
    yield opened
    await opened.close()


@pytest.fixture(params=["local", "kubernetes"])
async def executor(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Executor]:
    """A started executor of each kind; the Kubernetes one's Jobs run on the emulator."""
    if request.param == "local":
        local = LocalExecutor(tmp_path / "steps")
        await local.start()
        yield local
        await local.close()
        return
    async with running_emulator() as k8s:
        kubelet = Kubelet(k8s, tmp_path)
        jobs = KubernetesExecutor(
            JobOptions(namespace="eventflow", default_image="python:3.12"),
            api_client_factory=k8s.api_client,
            retry_base_delay=0.01,
            watch_resume_delay=0.01,
        )
        await jobs.start()
        yield jobs
        await jobs.close()
        await kubelet.close()


async def create_run(store: SqlStore, spec: WorkflowSpec = SPEC) -> RunRecord:
    event = ReceivedEvent(Event(id="e1", source="/t", type="t"), "hook", datetime.now(UTC))
    run = NewRun(
        id="run-1",
        trigger="t",
        workflow="w",
        dedupe_key="k",
        arguments={},
        workflow_spec=spec.model_dump(mode="json", by_alias=True),
        step_names=tuple(step.name for step in spec.steps),
    )
    [created] = (await store.record_dispatch(event, [], [run], datetime.now(UTC))).created
    return created


async def finish(controller: RunController, store: SqlStore, record: RunRecord) -> RunRecord:
    controller.admit(record)
    return await finished(store, record)


async def finished(store: SqlStore, record: RunRecord) -> RunRecord:
    async with asyncio.timeout(20):
        while (run := await store.get_run(record.id)) is None or run.state not in (
            "Succeeded",
            "Failed",
            "Cancelled",
        ):
            await asyncio.sleep(0.02)
    return run


async def test_run_completes_after_the_store_failed_for_a_while(store, executor):
    """Progress that could not be stored is kept and stored on the next try; the run ends."""
    controller = RunController(
        FlakyStore(store, failures=2), executor, lambda: datetime.now(UTC), dict
    )
    await controller.start()
    run = await finish(controller, store, await create_run(store))
    await controller.close(1.0)
    assert run.state == "Succeeded"
    assert [(step.name, step.state, step.attempt) for step in run.steps] == [
        ("first", "Succeeded", 1),
        ("second", "Succeeded", 1),
    ]


async def test_step_the_executor_refuses_fails_with_the_reason(store, tmp_path):
    """A submit the executor refuses ends that attempt Failed, saying why, and the run too."""
    executor = RefusingExecutor(tmp_path / "steps")
    await executor.start()
    controller = RunController(store, executor, lambda: datetime.now(UTC), dict)
    await controller.start()
    record = await create_run(store)
    run = await finish(controller, store, record)
    await controller.close(1.0)
    # `first` has no retries: its refused attempt fails the run
    assert run.state == "Failed"
    first = run.steps[0]
    assert (first.state, first.attempt) == ("Failed", 1)
    assert first.reason == "the executor did not take the step: API server unavailable"
    assert run.reason == (
        "step 'first' failed: the executor did not take the step: API server unavailable"
    )


def python(code: str, *args: str) -> dict[str, Any]:
    return {"command": ["python3", "-c", code, *args]}


WRITE_OUTPUTS = "import json, os; json.dump({0}, open(os.environ['EVENTFLOW_OUTPUT_FILE'], 'w'))"
CHAIN = WorkflowSpec.model_validate(
    {
        "steps": [
            # outputs as the last line of the log; the next step writes them to the file
            {"name": "count", **python("print('counting'); print('{\"n\": 2}')")},
            {
                "name": "triple",
                "depends": ["count"],
                **python(
                    "import sys; n = int(sys.argv[1]); print('tripling', n); "
                    + WRITE_OUTPUTS.format("{'n': n * 3}"),
                    "{{ string(steps.count.outputs.n) }}",
                ),
            },
        ]
    }
)


async def run_to_the_end(store: SqlStore, executor: Executor, spec: WorkflowSpec) -> RunRecord:
    controller = RunController(store, executor, lambda: datetime.now(UTC), dict)
    await controller.start()
    run = await finish(controller, store, await create_run(store, spec))
    await controller.close(1.0)
    return run


async def test_chain_passes_outputs_from_step_to_step(store, executor):
    """Outputs (a last JSON line, a file) pass to the next step's argument; logs are kept."""
    run = await run_to_the_end(store, executor, CHAIN)
    assert run.state == "Succeeded"
    assert [(s.name, s.state, s.attempt, s.exit_code, s.outputs) for s in run.steps] == [
        ("count", "Succeeded", 1, 0, {"n": 2}),
        ("triple", "Succeeded", 1, 0, {"n": 6}),
    ]
    assert await store.get_step_log(run.id, "triple") == "tripling 2"


FLAKY = WorkflowSpec.model_validate(
    {
        "failFast": False,
        "steps": [
            {
                "name": "flaky",
                **python(
                    "import os, sys; sys.exit(3 if os.environ['EVENTFLOW_ATTEMPT'] == '1' else 0)"
                ),
                "retries": {"limit": 1, "backoff": 0},
            },
            {
                "name": "broken",
                **python("import sys; print('no luck'); sys.exit(3)"),
                "retries": {"limit": 1, "backoff": 0},
            },
            {"name": "after", "depends": ["broken"], **python("print('never')")},
        ],
    }
)


async def test_failed_attempts_are_retried_and_the_last_failure_fails_the_run(store, executor):
    """A step failing once succeeds on its retry; one failing twice fails the run, skipping its dependent."""
    run = await run_to_the_end(store, executor, FLAKY)
    assert [(s.name, s.state, s.attempt, s.exit_code, s.reason) for s in run.steps] == [
        ("flaky", "Succeeded", 2, 0, None),
        ("broken", "Failed", 2, 3, "exited with code 3"),
        ("after", "Skipped", 0, None, "upstream step 'broken' failed"),
    ]
    assert (run.state, run.reason) == ("Failed", "step 'broken' failed: exited with code 3")
    assert await store.get_step_log(run.id, "broken", attempt=1) == "no luck"


SLOW = WorkflowSpec.model_validate(
    {"steps": [{"name": "work", **python("import time; time.sleep(30)"), "timeout": "1s"}]}
)


async def test_cancel_stops_the_running_step(store, executor):
    """Cancelling a run stops its running step and ends the run Cancelled."""
    controller = RunController(store, executor, lambda: datetime.now(UTC), dict)
    await controller.start()
    record = await create_run(
        store,
        SPEC.model_validate({"steps": [{"name": "work", **python("import time; time.sleep(30)")}]}),
    )
    controller.admit(record)
    async with asyncio.timeout(10):
        while (await store.get_run(record.id)).steps[0].state != "Running":
            await asyncio.sleep(0.02)
    await controller.cancel(record.id)
    run = await finished(store, record)
    await controller.close(1.0)
    assert (run.state, run.reason) == ("Cancelled", "cancelled by request")
    assert [(s.name, s.state, s.reason) for s in run.steps] == [("work", "Cancelled", "cancelled")]


async def test_a_run_admitted_after_it_ended_is_left_as_it_ended(store, executor):
    """A stale record (a run cancelled while it waited, admitted again) starts nothing."""
    controller = RunController(store, executor, lambda: datetime.now(UTC), dict)
    await controller.start()
    record = await create_run(
        store,
        SPEC.model_validate({"steps": [{"name": "work", **python("import time; time.sleep(30)")}]}),
    )
    await controller.cancel(record.id)
    controller.admit(record)  # still says Pending
    await controller.close(5.0)
    run = await store.get_run(record.id)
    assert run is not None
    assert (run.state, run.reason) == ("Cancelled", "cancelled by request")
    assert [(s.name, s.state, s.attempt) for s in run.steps] == [("work", "Pending", 0)]


async def test_step_past_its_timeout_is_timed_out(store, executor):
    """A step still running at its timeout is stopped and marked TimedOut, failing the run."""
    run = await run_to_the_end(store, executor, SLOW)
    assert [(s.name, s.state, s.reason) for s in run.steps] == [
        ("work", "TimedOut", "timed out after 1s")
    ]
    assert (run.state, run.reason) == ("Failed", "step 'work' failed: timed out after 1s")
