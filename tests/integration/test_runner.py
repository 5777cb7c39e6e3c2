"""The run controller against a real store and real local processes, with injected faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventflow.events import Event, ReceivedEvent
from eventflow.executors.local import LocalExecutor
from eventflow.executors.protocol import StepSpec
from eventflow.resources.models import WorkflowSpec
from eventflow.runs.runner import RunController
from eventflow.store.records import NewRun, RunRecord
from eventflow.store.sql import SqlStore

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


async def create_run(store: SqlStore) -> RunRecord:
    event = ReceivedEvent(Event(id="e1", source="/t", type="t"), "hook", datetime.now(UTC))
    run = NewRun(
        id="run-1",
        trigger="t",
        workflow="w",
        dedupe_key="k",
        arguments={},
        workflow_spec=SPEC.model_dump(mode="json", by_alias=True),
        step_names=("first", "second"),
    )
    [created] = (await store.record_dispatch(event, [], [run], datetime.now(UTC))).created
    return created


async def finish(controller: RunController, store: SqlStore, record: RunRecord) -> RunRecord:
    controller.admit(record)
    async with asyncio.timeout(20):
        while (run := await store.get_run(record.id)) is None or run.state not in (
            "Succeeded",
            "Failed",
        ):
            await asyncio.sleep(0.02)
    return run


async def test_run_completes_after_the_store_failed_for_a_while(store, tmp_path):
    """Progress that could not be stored is kept and stored on the next try; the run ends."""
    executor = LocalExecutor(tmp_path / "steps")
    await executor.start()
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
