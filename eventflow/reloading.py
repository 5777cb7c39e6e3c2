"""The live configuration: the resource files and the registered webhooks, applied while
eventflow runs, and applied again on reload (SIGHUP, POST /api/v1/reload, the file watcher of
`watching.py`) or registration.

A change is all or nothing. The files are read and checked, the registered webhooks read from
the store, the sensors that are new or whose spec changed are created, and the webhook paths
are checked; any problem raises `ResourceError` and the running configuration stays as it was.
Then the catalog, the sensors and the path map are swapped, each by one assignment: a request
already inside a webhook sensor finishes on the object it started with, a new one finds the new
map. Sensors whose kind and spec did not change keep running untouched (a stream sensor keeps
its connection and position); changed ones are stopped before their successor starts, so two
consumers of one source never overlap.

`plan_changes` and `path_problems` are pure. This module does not parse HTTP or write the store.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog
from pydantic import BaseModel, ValidationError

from eventflow.engine.catalog import Catalog
from eventflow.errors import Problem, ResourceError
from eventflow.resources.describing import FieldPath, describe_errors, dotted
from eventflow.resources.loading import Located
from eventflow.resources.models import Sensor as SensorResource
from eventflow.resources.validation import ResourceSet, load_resources
from eventflow.sensing.protocol import Emit, HttpSensor, Sensor, SensorPlugin
from eventflow.store.webhooks import RegisteredWebhook

log = structlog.get_logger()

WEBHOOK_KIND = "webhook"
"""The sensor kind the REST API registers endpoints of."""

API_ORIGIN = "api"
Origin = Literal["yaml", "api"]


@dataclass(frozen=True, slots=True)
class SensorEntry:
    """One sensor as configured: where, and with which spec."""

    name: str
    kind: str
    spec: Any  # as written (YAML or JSON); equal specs mean an unchanged sensor
    config: BaseModel
    origin: Origin
    file: str = API_ORIGIN
    line: int = 0
    located: Located[SensorResource] | None = None  # a YAML sensor's document

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.origin == "yaml" else "the REST API"

    def problem(self, path: FieldPath, message: str) -> Problem:
        line = self.line if self.located is None else self.located.line_of(path)
        return Problem(self.file, line, f"Sensor/{self.name}", dotted(path), message)


@dataclass(frozen=True, slots=True)
class SensorChanges:
    """Which sensors a change starts, stops (a changed one is in both) and leaves running."""

    started: tuple[str, ...]
    stopped: tuple[str, ...]
    kept: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "started": list(self.started),
            "stopped": list(self.stopped),
            "kept": list(self.kept),
        }


def plan_changes(old: Mapping[str, SensorEntry], new: Mapping[str, SensorEntry]) -> SensorChanges:
    """What going from `old` to `new` starts, stops and keeps. Pure."""

    def same(name: str) -> bool:
        return old[name].kind == new[name].kind and old[name].spec == new[name].spec

    kept = sorted(name for name in new if name in old and same(name))
    return SensorChanges(
        started=tuple(sorted(name for name in new if name not in kept)),
        stopped=tuple(sorted(name for name in old if name not in kept)),
        kept=tuple(kept),
    )


def path_problems(
    entries: Mapping[str, SensorEntry], sensors: Mapping[str, Sensor]
) -> tuple[dict[str, HttpSensor], list[Problem]]:
    """The path map of the HTTP sensors, and a problem for each path served twice. Pure.

    A problem is told on a YAML sensor, the one a user edits: of two YAML sensors the later
    one; of a YAML sensor and a registered webhook, the YAML sensor.
    """
    paths: dict[str, HttpSensor] = {}
    problems: list[Problem] = []
    ordered = sorted(entries.values(), key=lambda e: (e.origin != "api", e.file, e.line))
    for entry in ordered:
        sensor = sensors.get(entry.name)
        if not isinstance(sensor, HttpSensor):
            continue
        holder = paths.get(sensor.path)
        if holder is None:
            paths[sensor.path] = sensor
            continue
        other = entries[holder.name]
        problems.append(
            entry.problem(
                ("spec", entry.kind, "path"),
                f"path {sensor.path!r} is already served by sensor {other.name!r}"
                f" (defined in {other.where}); give each sensor its own path",
            )
        )
    return paths, problems


def yaml_entries(resources: ResourceSet) -> dict[str, SensorEntry]:
    entries = {}
    for name, config in resources.sensor_configs.items():
        located = resources.sensors[name]
        spec = located.resource.spec
        raw = (spec.model_extra or {})[spec.kind]
        entries[name] = SensorEntry(
            name, spec.kind, raw, config, "yaml", located.file, located.line, located
        )
    return entries


def registered_entry(record: RegisteredWebhook, model: type[BaseModel]) -> SensorEntry:
    """The entry of a registered webhook; ValidationError if its spec no longer validates."""
    spec = dict(record.spec)
    return SensorEntry(record.name, WEBHOOK_KIND, spec, model.model_validate(spec), "api")


def spec_problems(model: type[BaseModel], spec: Any) -> list[str]:
    """Each problem of `spec` as 'field.path: message', worded as for YAML files."""
    try:
        model.model_validate(spec)
    except ValidationError as error:
        return [
            f"{dotted(path)}: {message}" if path else message
            for path, message in describe_errors(error, model, spec)
        ]
    return []


class RegisteredWebhooks(Protocol):
    async def list_all(self) -> list[RegisteredWebhook]: ...


class SensorSet:
    """The running sensors by name, their tasks, and the map of webhook paths.

    With `http_only` (an intake worker) it keeps only the sensors that answer HTTP: the ones
    that pull from a source run in the main process alone, so no source is read twice.
    `after_swap`, when set, runs after each change is in place (the main process has its
    intake workers apply the change too)."""

    def __init__(
        self,
        create: Callable[[SensorEntry], Sensor],
        emit_for: Callable[[str], Emit],
        *,
        http_only: bool = False,
    ) -> None:
        self._create = create
        self._emit_for = emit_for
        self._http_only = http_only
        self.after_swap: Callable[[], Awaitable[None]] | None = None
        self.entries: Mapping[str, SensorEntry] = {}
        self.sensors: Mapping[str, Sensor] = {}
        self._paths: Mapping[str, HttpSensor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def http_sensor(self, path: str) -> HttpSensor | None:
        return self._paths.get(path)

    def prepare(self, entries: Mapping[str, SensorEntry]) -> Prepared:
        """Create the sensors `entries` adds or changes; ResourceError on a path served twice.

        Nothing runs yet: a refused change leaves nothing behind.
        """
        changes = plan_changes(self.entries, entries)
        kept = {name: self.sensors[name] for name in changes.kept if name in self.sensors}
        created = {name: self._create(entries[name]) for name in changes.started}
        merged: dict[str, Sensor] = {**kept, **created}
        sensors = {
            name: merged[name]
            for name in sorted(entries)
            if not self._http_only or isinstance(merged[name], HttpSensor)
        }
        paths, problems = path_problems(entries, sensors)
        if problems:
            raise ResourceError(sorted(problems, key=lambda p: (p.file, p.line)))
        return Prepared(changes, dict(entries), sensors, paths)

    async def swap(self, prepared: Prepared) -> None:
        """Serve `prepared` from now on; stop the sensors it drops, start the ones it adds."""
        self.entries, self.sensors, self._paths = (
            prepared.entries,
            prepared.sensors,
            prepared.paths,
        )
        if self._running:
            await self._stop_tasks(prepared.changes.stopped)
            for name in prepared.changes.started:
                if name in self.sensors:
                    self._start_task(name)
        if self.after_swap is not None:
            await self.after_swap()

    def start(self) -> None:
        """Run every sensor; from now on a swap starts and stops them too."""
        self._running = True
        for name in self.sensors:
            if name not in self._tasks:
                self._start_task(name)

    async def stop(self) -> None:
        self._running = False
        await self._stop_tasks(list(self._tasks))

    def _start_task(self, name: str) -> None:
        sensor = self.sensors[name]
        self._tasks[name] = asyncio.create_task(
            sensor.run(self._emit_for(name)), name=f"sensor-{name}"
        )

    async def _stop_tasks(self, names: Collection[str]) -> None:
        tasks = [self._tasks.pop(name) for name in names if name in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked change, ready to swap in."""

    changes: SensorChanges
    entries: Mapping[str, SensorEntry]
    sensors: Mapping[str, Sensor]
    paths: Mapping[str, HttpSensor]


class LiveConfig:
    """The configuration eventflow runs on; `lock` serializes every change to it."""

    def __init__(
        self,
        paths: Sequence[Path],
        plugins: Mapping[str, SensorPlugin],
        registered: RegisteredWebhooks,
        sensors: SensorSet,
        use_catalog: Callable[[Catalog], None],
    ) -> None:
        self.lock = asyncio.Lock()
        self.sensors = sensors
        self._paths = paths
        self._plugins = plugins
        self._registered = registered
        self._use_catalog = use_catalog
        self.resources = ResourceSet.empty()

    @property
    def webhook_model(self) -> type[BaseModel]:
        return self._plugins[WEBHOOK_KIND].config_model

    async def load(self) -> SensorChanges:
        """Read the files and the registered webhooks and apply them; ResourceError (and
        nothing changed) when they have problems. The caller holds no lock."""
        async with self.lock:
            registered = await self._registered_entries()
            # Parsing and checking the files is CPU work of seconds for thousands of
            # documents: on a thread, the loop keeps answering webhooks meanwhile.
            resources = await asyncio.to_thread(
                load_resources, self._paths, self._plugins, frozenset(registered)
            )
            yaml = yaml_entries(resources)
            clashes = [
                entry.problem(
                    ("metadata", "name"),
                    f"a webhook named {entry.name!r} is registered through the REST API;"
                    f" rename this sensor, or remove the webhook (eventflow webhooks rm"
                    f" {entry.name})",
                )
                for entry in yaml.values()
                if entry.name in registered
            ]
            if clashes:
                raise ResourceError(clashes)
            prepared = self.sensors.prepare({**registered, **yaml})
            catalog = await asyncio.to_thread(Catalog.build, resources)
            self.resources = resources
            self._use_catalog(catalog)
            await self.sensors.swap(prepared)
        log.info("configuration loaded", **prepared.changes.as_dict())
        return prepared.changes

    async def apply_entries(self, entries: Mapping[str, SensorEntry]) -> SensorChanges:
        """Run on `entries` (the catalog unchanged); the caller holds `lock`."""
        prepared = self.sensors.prepare(entries)
        await self.sensors.swap(prepared)
        return prepared.changes

    def listeners(self, sensor: str) -> list[str]:
        """'trigger (file:line)' of each trigger that listens to the sensor named `sensor`."""
        return [
            f"{name} ({located.where})"
            for name, located in sorted(self.resources.triggers.items())
            if any(s.sensor == sensor for s in located.resource.spec.events.values())
        ]

    async def _registered_entries(self) -> dict[str, SensorEntry]:
        entries: dict[str, SensorEntry] = {}
        if WEBHOOK_KIND not in self._plugins:
            return entries
        model = self.webhook_model
        for record in await self._registered.list_all():
            try:
                entries[record.name] = registered_entry(record, model)
            except ValidationError as error:
                # One stored spec that no longer validates must not keep the others down.
                log.error(
                    "registered webhook skipped",
                    webhook=record.name,
                    problems=spec_problems(model, dict(record.spec)),
                    error_count=error.error_count(),
                )
        return entries


async def reload_logged(reload: Callable[[], Awaitable[SensorChanges]], cause: str) -> None:
    """Run `reload`; a refusal is logged with its file:line problems, the old config kept.

    SIGHUP and the file watcher have nobody to answer, so the log is where a user sees why."""
    try:
        await reload()
    except ResourceError as error:
        log.error(
            "reload refused; nothing changed",
            cause=cause,
            problems=[str(problem) for problem in error.problems],
        )


def reload_on_sighup(reload: Callable[[], Awaitable[SensorChanges]]) -> Callable[[], None]:
    """Run `reload` on each SIGHUP (logging the problems of a refused one) until the returned
    function is called. Needs a running loop, on Unix."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def on_signal() -> None:
        task = loop.create_task(reload_logged(reload, "SIGHUP"), name="reload-on-sighup")
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_signal)

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in pending:
            task.cancel()

    return stop
