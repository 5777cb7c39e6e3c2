"""Wires the boxes together from settings, and starts and stops them in order.

Start: resources (fail before anything runs) -> store (migrated) -> bus -> executor -> run
controller (resumes unfinished runs) -> dispatcher -> sensors. Stop runs the other way, so
that nothing accepted is dropped: intake stops first, the bus is drained into the store,
running steps get the grace period, then everything closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from eventflow.bus.memory import MemoryBus
from eventflow.bus.protocol import EventBus
from eventflow.engine.catalog import Catalog
from eventflow.engine.dispatching import Dispatcher
from eventflow.errors import ConfigError
from eventflow.executors.local import LocalExecutor
from eventflow.executors.protocol import Executor
from eventflow.resources.validation import load_resources
from eventflow.runs.runner import RunController
from eventflow.sensing.discovery import discover_plugins
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import Emit, HttpSensor, Sensor, SensorContext, SensorPlugin
from eventflow.settings import Settings
from eventflow.store.records import RunRecord
from eventflow.store.sql import SqlStore

log = structlog.get_logger()

API_SENSOR = "api"
"""The stamp of events put on the bus through the REST API (`eventflow send`)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def open_bus(settings: Settings) -> EventBus:
    """The bus the URL names: memory://, nats://HOST:PORT or kafka://HOST:PORT."""
    bus = settings.bus
    scheme = bus.url.split("://", 1)[0]
    if scheme == "memory":
        return MemoryBus(max_pending=bus.max_pending)
    if scheme in ("nats", "tls"):
        from eventflow.bus.nats import NatsBus

        return NatsBus(
            bus.url,
            stream=bus.stream,
            subject_prefix=bus.subject_prefix,
            max_age_seconds=bus.max_age_seconds,
            ack_wait_seconds=bus.ack_wait_seconds,
            max_deliver=bus.max_deliver,
        )
    if scheme == "kafka":
        from eventflow.bus.kafka import KafkaBus

        return KafkaBus(bus.url, topic=bus.topic, ack_wait_seconds=bus.ack_wait_seconds)
    raise ConfigError(
        f"bus.url: {bus.url!r} is not supported; use memory://, nats://HOST:PORT"
        " or kafka://HOST:PORT"
    )


def open_executor(settings: Settings) -> Executor:
    """The executor the settings choose: local processes, or Kubernetes Jobs."""
    executor = settings.executor
    if executor.kind == "kubernetes":
        from eventflow.executors.kubernetes import KubernetesExecutor
        from eventflow.executors.manifests import JobOptions

        k8s = executor.kubernetes
        return KubernetesExecutor(
            JobOptions(
                namespace=k8s.namespace,
                service_account=k8s.service_account,
                ttl_seconds_after_finished=k8s.ttl_seconds_after_finished,
                default_image=k8s.default_image,
            ),
            kubeconfig=k8s.kubeconfig,
            context=k8s.context,
            qps=k8s.qps,
            burst=k8s.burst,
            log_tail_lines=executor.log_tail_lines,
        )
    return LocalExecutor(
        settings.data_dir / "steps",
        log_tail_lines=executor.log_tail_lines,
        kill_grace_seconds=executor.kill_grace_seconds,
    )


def load_catalog(paths: Sequence[Path], plugins: Mapping[str, SensorPlugin]) -> Catalog:
    return Catalog.build(load_resources(paths, plugins))


@dataclass
class Service:
    settings: Settings
    resource_paths: Sequence[Path]
    plugins: Mapping[str, SensorPlugin] = field(default_factory=discover_plugins)
    ready: bool = False
    accepting: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _sensor_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _http_sensors: dict[str, HttpSensor] = field(default_factory=dict)

    async def start(self) -> None:
        self.catalog = load_catalog(self.resource_paths, self.plugins)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = await SqlStore.open(self.settings.store_url)
        self.bus = open_bus(self.settings)
        await self.bus.start()
        self.executor = open_executor(self.settings)
        await self.executor.start()
        self.runs = RunController(
            self.store,
            self.executor,
            utc_now,
            lambda: {name: rule.concurrency_limit for name, rule in self.catalog.rules.items()},
            step_labels=lambda run, step: {
                "eventflow.io/run": run.id,
                "eventflow.io/step": step,
                "eventflow.io/trigger": run.trigger,
            },
        )
        await self.runs.start()
        dispatcher = Dispatcher(
            bus=self.bus,
            store=self.store,
            runs=self.runs,
            catalog=lambda: self.catalog,
            clock=utc_now,
        )
        self._tasks.append(asyncio.create_task(dispatcher.run(), name="dispatcher"))
        self.sensors: dict[str, Sensor] = {}
        for name, config in self.catalog.resources.sensor_configs.items():
            kind = self.catalog.resources.sensors[name].resource.spec.kind
            context = SensorContext(state=self.store.sensor_state(name, utc_now), clock=utc_now)
            sensor = self.plugins[kind].create(name, config, context)
            self.sensors[name] = sensor
            self._sensor_tasks.append(
                asyncio.create_task(sensor.run(self.emit_for(name)), name=f"sensor-{name}")
            )
        self._http_sensors = {
            sensor.path: sensor
            for sensor in self.sensors.values()
            if isinstance(sensor, HttpSensor)
        }
        self.accepting = True
        self.ready = True
        log.info(
            "eventflow started",
            sensors=len(self.sensors),
            triggers=len(self.catalog.rules),
            workflows=len(self.catalog.resources.workflows),
            store=self.settings.store_url.split("://", 1)[0],
            bus=self.settings.bus.url,
        )

    def emit_for(self, sensor: str) -> Emit:
        return make_emit(sensor, self.bus, utc_now)

    def http_sensor(self, path: str) -> HttpSensor | None:
        """The sensor that answers /webhooks/<path>, if any."""
        return self._http_sensors.get(path)

    def admit(self, run: RunRecord) -> None:
        self.runs.admit(run)

    async def stop(self) -> None:
        """Stop intake, store what the bus holds, let steps finish (grace), close."""
        log.info("eventflow stopping")
        self.accepting = False
        self.ready = False
        for task in self._sensor_tasks:
            task.cancel()
        await asyncio.gather(*self._sensor_tasks, return_exceptions=True)
        if not await self.bus.drain(self.settings.shutdown_grace_seconds):
            log.warning("bus not drained at shutdown; undelivered events are lost")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runs.close(self.settings.shutdown_grace_seconds)
        await self.bus.close()
        await self.store.close()
        log.info("eventflow stopped")
