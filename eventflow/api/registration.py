"""`/api/v1/webhooks` and `/api/v1/reload`: webhook endpoints registered while eventflow runs,
and the resource files read again.

A registered webhook is a Sensor's `spec.webhook` plus a `name`, checked by the same strict
model as YAML, with the same wording (422 with every problem). It is kept in the store first,
then served at once, and again after a restart; its events are stamped with its name, so a
trigger listens to it with `sensor: <name>`. Webhooks defined in YAML are listed too
(`"origin": "yaml"`) but are read-only here (409: the file is the truth, edit it and reload).
A conflict (name or path taken, a trigger still listening to a webhook being removed) is a 409
with the reason, and nothing is stored. Every change holds the live configuration's lock, so
it never interleaves with another registration or a reload.

The checks of a registration against the running sensors are pure (`conflict`); the swap
itself is `reloading.py`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from eventflow.api.responses import BodyTooLargeError, as_json, error, read_body, service_of
from eventflow.errors import ResourceError
from eventflow.reloading import WEBHOOK_KIND, SensorEntry, spec_problems
from eventflow.resources.describing import describe_errors, dotted
from eventflow.resources.models import Metadata
from eventflow.sensing.protocol import HttpSensor, Sensor
from eventflow.service import Service, utc_now
from eventflow.store.webhooks import RegisteredWebhook, WebhookConflictError

router = APIRouter(prefix="/api/v1")
ServiceDep = Annotated[Service, Depends(service_of)]

MAX_SPEC_BYTES = 65_536


def read_only(entry: SensorEntry) -> str:
    return f"sensor {entry.name!r} is defined in {entry.file}: edit the file and reload"


def conflict(
    entries: Mapping[str, SensorEntry],
    sensors: Mapping[str, Sensor],
    name: str,
    path: str,
    *,
    replacing: bool,
) -> str | None:
    """Why registering (or, `replacing`, changing) webhook `name` at `path` is refused. Pure."""
    existing = entries.get(name)
    if existing is not None and existing.origin == "yaml":
        return read_only(existing)
    if existing is not None and not replacing:
        return (
            f"a webhook named {name!r} is already registered; change it with"
            f" PUT /api/v1/webhooks/{name} or pick another name"
        )
    for other, sensor in sensors.items():
        if other != name and isinstance(sensor, HttpSensor) and sensor.path == path:
            return (
                f"path {path!r} is already served by sensor {other!r}"
                f" (defined in {entries[other].where}); pick another path"
            )
    return None


def _name_problems(name: Any) -> list[str]:
    data = {"name": name}
    try:
        Metadata.model_validate(data)
    except ValidationError as failure:
        return [f"{dotted(p)}: {m}" for p, m in describe_errors(failure, Metadata, data)]
    return []


def _view(entry: SensorEntry, record: RegisteredWebhook | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": entry.name,
        "origin": entry.origin,
        "readOnly": entry.origin == "yaml",
        "path": getattr(entry.config, "path", None),
        "spec": entry.spec,
    }
    if entry.origin == "yaml":
        view["file"] = entry.where
    if record is not None:
        view["created_at"] = record.created_at
        view["updated_at"] = record.updated_at
    return view


def _invalid(problems: list[str]) -> Response:
    return as_json(
        {
            "error": f"the webhook has {len(problems)} problem(s); nothing was registered",
            "problems": problems,
        },
        status=422,
    )


async def _body(request: Request) -> dict[str, Any] | Response:
    try:
        data = json.loads(await read_body(request, MAX_SPEC_BYTES))
    except BodyTooLargeError as exc:
        return error(413, str(exc))
    except ValueError as exc:
        return error(400, f"body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return error(400, "body: expected a JSON object: name and the spec.webhook fields")
    return data


def _webhook_entries(service: Service) -> dict[str, SensorEntry]:
    return {
        name: entry
        for name, entry in service.live.sensors.entries.items()
        if entry.kind == WEBHOOK_KIND
    }


@router.get("/webhooks")
async def list_webhooks(service: ServiceDep) -> Response:
    records = {record.name: record for record in await service.store.webhooks.list_all()}
    return as_json(
        {
            "webhooks": [
                _view(entry, records.get(name))
                for name, entry in sorted(_webhook_entries(service).items())
            ]
        }
    )


@router.get("/webhooks/{name}")
async def get_webhook(name: str, service: ServiceDep) -> Response:
    entry = _webhook_entries(service).get(name)
    if entry is None:
        return error(404, f"no webhook named {name!r}; list them with GET /api/v1/webhooks")
    return as_json(_view(entry, await service.store.webhooks.get(name)))


@router.post("/webhooks", status_code=201)
async def register_webhook(request: Request, service: ServiceDep) -> Response:
    data = await _body(request)
    if isinstance(data, Response):
        return data
    return await _put(service, data.pop("name", None), data, replacing=False)


@router.put("/webhooks/{name}")
async def replace_webhook(name: str, request: Request, service: ServiceDep) -> Response:
    data = await _body(request)
    if isinstance(data, Response):
        return data
    given = data.pop("name", name)
    if given != name:
        return _invalid(
            [
                f"name: {given!r} differs from {name!r} in the URL; a webhook is not renamed:"
                " register the new name and remove the old one"
            ]
        )
    return await _put(service, name, data, replacing=True)


async def _put(service: Service, name: Any, spec: dict[str, Any], *, replacing: bool) -> Response:
    if WEBHOOK_KIND not in service.plugins:
        return error(404, "the webhook sensor kind is not installed in this eventflow")
    model = service.live.webhook_model
    problems = _name_problems(name) + spec_problems(model, spec)
    if problems:
        return _invalid(problems)
    live = service.live
    async with live.lock:
        entries = live.sensors.entries
        current = entries.get(name)
        if replacing and current is None:
            return error(404, f"no webhook named {name!r}; register it with POST /api/v1/webhooks")
        entry = SensorEntry(name, WEBHOOK_KIND, spec, model.model_validate(spec), "api")
        path = getattr(entry.config, "path", "")
        reason = conflict(entries, live.sensors.sensors, name, path, replacing=replacing)
        if reason is not None:
            return error(409, reason)
        try:
            prepared = live.sensors.prepare({**entries, name: entry})
        except ResourceError as exc:
            return error(409, "; ".join(problem.message for problem in exc.problems))
        store = service.store.webhooks
        try:
            if replacing:
                record = await store.replace(name, path, spec, utc_now())
            else:
                record = await store.create(name, path, spec, utc_now())
        except WebhookConflictError as exc:
            return error(409, str(exc))
        if record is None:  # removed by another replica since this one last loaded
            return error(404, f"no webhook named {name!r}; register it with POST /api/v1/webhooks")
        await live.sensors.swap(prepared)
    status = 200 if replacing else 201
    headers = {} if replacing else {"Location": f"/api/v1/webhooks/{name}"}
    response = as_json(_view(entry, record), status=status)
    response.headers.update(headers)
    return response


@router.delete("/webhooks/{name}")
async def remove_webhook(name: str, service: ServiceDep) -> Response:
    live = service.live
    async with live.lock:
        entries = dict(live.sensors.entries)
        entry = entries.pop(name, None)
        if entry is None or entry.kind != WEBHOOK_KIND:
            return error(404, f"no webhook named {name!r}; list them with GET /api/v1/webhooks")
        if entry.origin == "yaml":
            return error(409, read_only(entry))
        listeners = live.listeners(name)
        if listeners:
            return error(
                409,
                f"webhook {name!r} is still listened to by trigger(s) {', '.join(listeners)};"
                " remove it from those triggers and reload first",
            )
        prepared = live.sensors.prepare(entries)
        await service.store.webhooks.delete(name)
        await live.sensors.swap(prepared)
    return as_json({"name": name, "deleted": True})


@router.post("/reload")
async def reload(service: ServiceDep) -> Response:
    """Read the resource files again; change nothing when they have a problem."""
    try:
        changes = await service.reload()
    except ResourceError as exc:
        return as_json(
            {
                "error": f"{len(exc.problems)} problem(s) in the resources; nothing changed",
                "problems": [str(problem) for problem in exc.problems],
            },
            status=422,
        )
    return as_json({"reloaded": True, "sensors": changes.as_dict()})
