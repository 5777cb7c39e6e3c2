"""Wires the boxes together from settings, and starts and stops them in order.

Start: store (migrated) -> resources and registered webhooks (fail before anything runs,
`reloading.py`) -> executor -> run
controller (resumes unfinished runs) -> bus -> dispatcher -> sensors. The bus may be down: the
service then starts anyway (webhooks answer 503, /readyz says why), connects in the background
and starts the dispatcher and the sensors once the bus is up (`BusConnector`). Stop runs the
other way, so that nothing accepted is dropped: intake stops first, the bus is drained into
the store, running steps get the grace period, then everything closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from eventflow.bus.connecting import BusConnector
from eventflow.bus.memory import MemoryBus
from eventflow.bus.protocol import EventBus
from eventflow.engine.catalog import Catalog
from eventflow.engine.dispatching import Dispatcher
from eventflow.errors import STOPPING, BusUnavailableError, ConfigError
from eventflow.events import ReceivedEvent
from eventflow.executors.local import LocalExecutor
from eventflow.executors.protocol import Executor
from eventflow.reloading import LiveConfig, SensorChanges, SensorEntry, SensorSet
from eventflow.runs.runner import RunController
from eventflow.sensing.discovery import discover_plugins
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import (
    Emit,
    HttpSensor,
    ReportsConnection,
    ReportsProblem,
    Sensor,
    SensorContext,
    SensorPlugin,
)
from eventflow.settings import Settings
from eventflow.store.records import RunRecord
from eventflow.store.sql import SqlStore

log = structlog.get_logger()

API_SENSOR = "api"
"""The stamp of events put on the bus through the REST API (`eventflow send`)."""
FIRST_CONNECT_SECONDS = 3.0
"""How long `start` waits for the bus before it goes on and lets it connect in the background."""


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
            dead_letter_subject=bus.dead_letter_subject,
            max_age_seconds=bus.max_age_seconds,
            ack_wait_seconds=bus.ack_wait_seconds,
            max_deliver=bus.max_deliver,
        )
    if scheme == "kafka":
        from eventflow.bus.kafka import KafkaBus

        return KafkaBus(
            bus.url,
            topic=bus.topic,
            ack_wait_seconds=bus.ack_wait_seconds,
            idempotent=bus.idempotent,
            max_deliver=bus.max_deliver,
        )
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
            defaults=k8s.defaults,
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


@dataclass
class Service:
    settings: Settings
    resource_paths: Sequence[Path]
    plugins: Mapping[str, SensorPlugin] = field(default_factory=discover_plugins)
    ready: bool = False
    accepting: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = await SqlStore.open(
            self.settings.store_url,
            replica_id=self.settings.replica.id,
            lease_seconds=self.settings.replica.lease_seconds,
        )
        # The files and the webhooks registered in the store are checked together: a trigger
        # may listen to a registered webhook.
        self.sensor_set = SensorSet(self._create_sensor, self.emit_for)
        self.live = LiveConfig(
            self.resource_paths, self.plugins, self.store.webhooks, self.sensor_set, self._use
        )
        try:
            await self.live.load()
        except BaseException:
            await self.store.close()
            raise
        self.bus = open_bus(self.settings)
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
        self.connector = BusConnector(self.bus, self.settings.bus.url, self._on_bus_up)
        self._connecting = asyncio.create_task(self.connector.run(), name="bus-connect")
        self._tasks.append(self._connecting)
        # The usual case (the broker is up) is served ready from the first request.
        await asyncio.wait([self._connecting], timeout=FIRST_CONNECT_SECONDS)
        self.accepting = True
        self.ready = True
        log.info(
            "eventflow started",
            sensors=len(self.sensors),
            triggers=len(self.catalog.rules),
            workflows=len(self.catalog.resources.workflows),
            store=self.settings.store_url.split("://", 1)[0],
            bus=self.settings.bus.url,
            bus_connected=self.connector.up.is_set(),
        )

    def _on_bus_up(self) -> None:
        """Start what reads or writes the bus: sensors take nothing from their sources before."""
        dispatcher = Dispatcher(
            bus=self.bus,
            store=self.store,
            runs=self.runs,
            catalog=lambda: self.catalog,
            clock=utc_now,
        )
        self._tasks.append(asyncio.create_task(dispatcher.run(), name="dispatcher"))
        self.sensor_set.start()

    def _create_sensor(self, entry: SensorEntry) -> Sensor:
        context = SensorContext(state=self.store.sensor_state(entry.name, utc_now), clock=utc_now)
        return self.plugins[entry.kind].create(entry.name, entry.config, context)

    def _use(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @property
    def sensors(self) -> Mapping[str, Sensor]:
        """The running sensors by name: from the files and registered through the API."""
        return self.sensor_set.sensors

    async def reload(self) -> SensorChanges:
        """Re-read the resource files; ResourceError, and nothing changed, on any problem."""
        return await self.live.load()

    def not_ready_reason(self) -> str | None:
        """Why the service cannot take events now (store aside), or None."""
        if not self.ready:
            return "starting or stopping"
        return self.connector.reason

    def sensor_connections(self) -> list[dict[str, bool | str | None]]:
        """Each sensor's connection to its source, by name: `connected` (None for sensors that
        keep none) and, from a sensor that says, the `problem` keeping it down (or None)."""
        report: list[dict[str, bool | str | None]] = []
        for name, sensor in sorted(self.sensors.items()):
            connected = sensor.connected if isinstance(sensor, ReportsConnection) else None
            entry: dict[str, bool | str | None] = {"name": name, "connected": connected}
            if isinstance(sensor, ReportsProblem):
                entry["problem"] = sensor.problem
            report.append(entry)
        return report

    async def publish_for_worker(self, event: ReceivedEvent) -> None:
        """Put an event an intake worker received on the bus, as `emit` would have."""
        if not self.accepting:
            raise BusUnavailableError(STOPPING, delay=1.0)
        await self.bus.publish(event)

    def emit_for(self, sensor: str) -> Emit:
        return make_emit(sensor, self.bus, utc_now)

    def http_sensor(self, path: str) -> HttpSensor | None:
        """The sensor that answers /webhooks/<path>, if any."""
        return self.sensor_set.http_sensor(path)

    def admit(self, run: RunRecord) -> None:
        self.runs.admit(run)

    async def stop(self) -> None:
        """Stop intake, store what the bus holds, let steps finish (grace), close."""
        log.info("eventflow stopping")
        self.accepting = False
        self.ready = False
        self._connecting.cancel()  # nothing new starts reading the bus from now on
        await self.sensor_set.stop()
        await asyncio.gather(self._connecting, return_exceptions=True)
        drained = not self.connector.up.is_set() or await self.bus.drain(
            self.settings.shutdown_grace_seconds
        )
        if not drained:
            log.warning("bus not drained at shutdown; undelivered events are lost")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runs.close(self.settings.shutdown_grace_seconds)
        await self.bus.close()
        await self.store.close()
        log.info("eventflow stopped")
