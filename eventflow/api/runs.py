"""Read and steer what happened: runs, their steps' logs, events and their decisions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from eventflow.api.responses import as_json, error, service_of
from eventflow.executors.protocol import StepKey
from eventflow.runs.states import StepState
from eventflow.service import Service

router = APIRouter(prefix="/api/v1")
ServiceDep = Annotated[Service, Depends(service_of)]


@router.get("/runs")
async def list_runs(
    service: ServiceDep, limit: int = 50, state: str | None = None, trigger: str | None = None
) -> Response:
    if not 1 <= limit <= 1000:
        return error(400, "limit: must be between 1 and 1000")
    runs = await service.store.list_runs(limit=limit, state=state, trigger=trigger)
    return as_json({"runs": [asdict(run) for run in runs]})


@router.get("/stats")
async def stats(service: ServiceDep, trigger: str | None = None) -> Response:
    """How many runs are in each state, over all triggers or one."""
    return as_json({"runs": await service.store.count_runs(trigger)})


@router.get("/runs/{run_id}")
async def get_run(run_id: str, service: ServiceDep) -> Response:
    run = await service.store.get_run(run_id)
    if run is None:
        return error(404, f"no run {run_id!r}")
    return as_json(asdict(run))


@router.post("/runs/{run_id}/cancel", status_code=202)
async def cancel_run(run_id: str, service: ServiceDep) -> Response:
    run = await service.runs.cancel(run_id)
    if run is None:
        return error(404, f"no run {run_id!r}")
    return as_json(asdict(run), status=202)


@router.get("/runs/{run_id}/steps/{step}/logs")
async def step_logs(
    run_id: str, step: str, service: ServiceDep, attempt: int | None = None, follow: bool = False
) -> Response:
    run = await service.store.get_run(run_id)
    if run is None:
        return error(404, f"no run {run_id!r}")
    record = next((s for s in run.steps if s.name == step), None)
    if record is None:
        names = ", ".join(s.name for s in run.steps)
        return error(404, f"run {run_id!r} has no step {step!r}; its steps: {names}")
    number = attempt or record.attempt
    if record.state == StepState.RUNNING.value and number == record.attempt:
        lines = service.executor.logs(StepKey(run_id, step, number), follow=follow)
        return StreamingResponse(_encoded(lines), media_type="text/plain")
    text = await service.store.get_step_log(run_id, step, number)
    if text is None:
        return error(404, f"step {step!r} of run {run_id!r} has no log for attempt {number}")
    return PlainTextResponse(text + "\n" if text else "")


async def _encoded(lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for line in lines:
        yield (line + "\n").encode()


@router.get("/events/{event_id}")
async def get_event(event_id: str, service: ServiceDep) -> Response:
    event = await service.store.get_event(event_id)
    if event is None:
        return error(404, f"no event {event_id!r}")
    return as_json(asdict(event))


@router.get("/triggers")
async def list_triggers(service: ServiceDep) -> Response:
    resources = service.catalog.resources
    return as_json(
        {
            "triggers": [
                {
                    "name": name,
                    "workflow": rule.workflow.metadata.name,
                    "file": resources.triggers[name].where,
                }
                for name, rule in sorted(service.catalog.rules.items())
            ]
        }
    )
