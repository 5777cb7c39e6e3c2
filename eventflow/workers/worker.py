"""One intake worker: a process that answers webhooks on the listener of `eventflow serve`.

The main process binds the listener and starts the workers (`supervising.py`); each worker
accepts connections on it and answers `/webhooks/` itself: the same sensors (read from the
same files and registered webhooks), the same checks, the same answers as the main process
would give. It publishes to the NATS or Kafka bus directly; on the embedded bus it puts its
events on the main process's memory bus through the channel (`channel.py`). Every other
request is passed to the main process (`proxy.py`), which runs the engine, the runs and the
REST API. Sensors that pull from a source run in the main process only.

A worker reloads when the main process says so, and stops when the main process tells it
(SIGTERM) or goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

import structlog
import uvicorn

from eventflow.api.listener import CoalescingHttpProtocol
from eventflow.api.webhooks import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    tune_collector_for_intake,
    with_webhooks,
)
from eventflow.bus.connecting import BusConnector
from eventflow.bus.protocol import EventBus, Publisher
from eventflow.errors import ResourceError
from eventflow.logs import configure_logging
from eventflow.reloading import LiveConfig, SensorEntry, SensorSet
from eventflow.sensing.discovery import discover_plugins
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import Emit, HttpSensor, Sensor, SensorContext, SensorPlugin
from eventflow.sensing.secrets import INLINE_ALLOWED
from eventflow.service import open_bus, utc_now
from eventflow.settings import Settings
from eventflow.workers.channel import WorkerEnd
from eventflow.workers.proxy import MainProcessProxy
from eventflow.workers.store import ChannelRateLimits, ChannelSensorState, ChannelWebhooks

log = structlog.get_logger()


class IntakeWorker:
    """The webhook sensors of one worker process, and the bus they publish to."""

    def __init__(
        self,
        settings: Settings,
        resource_paths: list[Path],
        channel: Path,
        plugins: Mapping[str, SensorPlugin],
    ) -> None:
        self.settings = settings
        self.accepting = False
        self._paths = resource_paths
        self._plugins = plugins
        self._main = WorkerEnd(channel, self._reload)
        self._rate_limits = ChannelRateLimits(self._main.ask_store)
        self._bus: EventBus | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.sensor_set = SensorSet(self._create_sensor, self.emit_for, http_only=True)
        registered = ChannelWebhooks(self._main.ask_store)
        self.live = LiveConfig(
            self._paths, self._plugins, registered, self.sensor_set, lambda _: None
        )

    async def start(self) -> None:
        # Connected before loading: the registered webhooks are read through the main process.
        # A reload asked meanwhile waits for this load (LiveConfig's lock), then reads anew.
        await self._main.connect()
        await self.live.load()
        if self.settings.bus.url.split("://", 1)[0] == "memory":
            self.sensor_set.start()
        else:
            self._bus = open_bus(self.settings)
            connector = BusConnector(self._bus, self.settings.bus.url, self.sensor_set.start)
            self._connecting = asyncio.create_task(connector.run(), name="bus-connect")
        self.accepting = True
        self._main.ready()

    @property
    def _publisher(self) -> Publisher:
        return self._main if self._bus is None else self._bus

    def emit_for(self, sensor: str) -> Emit:
        return make_emit(sensor, self._publisher, utc_now)

    def http_sensor(self, path: str) -> HttpSensor | None:
        return self.sensor_set.http_sensor(path)

    async def wait_orphaned(self) -> None:
        """Return when the main process went away."""
        await self._main.closed.wait()

    async def stop(self) -> None:
        self.accepting = False
        await self.sensor_set.stop()
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._bus is not None:
            await self._bus.close()
        await self._main.close()

    def _create_sensor(self, entry: SensorEntry) -> Sensor:
        context = SensorContext(
            state=ChannelSensorState(entry.name, self._main.ask_store),
            clock=utc_now,
            rate_limits=self._rate_limits,
        )
        return self._plugins[entry.kind].create(entry.name, entry.config, context)

    async def _reload(self) -> list[str]:
        try:
            await self.live.load()
        except ResourceError as error:
            return [str(problem) for problem in error.problems]
        except Exception as error:  # the main process must hear of it, not wait in vain
            log.exception("intake worker reload failed")
            return [f"intake worker reload failed: {error}"]
        return []


def stop_as_on_sigterm(_: object) -> None:
    """Stop the way SIGTERM stops uvicorn: requests in progress are answered first."""
    signal.raise_signal(signal.SIGTERM)


def worker_app(worker: IntakeWorker, proxy: MainProcessProxy) -> ASGIApp:
    """Webhooks answered here, every other request passed to the main process; the lifespan
    starts and stops the worker, and the worker stops by itself if the main process is gone."""

    async def lifespan(receive: Receive, send: Send) -> None:
        await receive()
        try:
            await worker.start()
        except Exception as error:
            log.exception("intake worker did not start")
            await send({"type": "lifespan.startup.failed", "message": str(error)})
            return
        orphaned = asyncio.create_task(worker.wait_orphaned(), name="orphan-watch")
        orphaned.add_done_callback(stop_as_on_sigterm)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        orphaned.remove_done_callback(stop_as_on_sigterm)
        orphaned.cancel()
        await worker.stop()
        await proxy.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def rest(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await proxy(scope, receive, send)

    return with_webhooks(worker, rest)


def main() -> None:
    parser = argparse.ArgumentParser(description="an intake worker of `eventflow serve`")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listener-fd", type=int, required=True)
    parser.add_argument("--channel", type=Path, required=True)
    parser.add_argument("--api-socket", required=True)
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--dev", action="store_true")
    parser.add_argument("paths", type=Path, nargs="*")
    args = parser.parse_args()
    settings = Settings.model_validate_json(args.settings.read_text())
    configure_logging(settings.log_format, settings.log_level)
    structlog.contextvars.bind_contextvars(intake_worker=args.index)
    if args.dev:
        INLINE_ALLOWED.set(True)
    # The main process reloads the workers itself; a terminal's hang-up is not for them.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    listener = socket.socket(fileno=args.listener_fd)
    worker = IntakeWorker(settings, args.paths, args.channel, discover_plugins())
    config = uvicorn.Config(
        worker_app(worker, MainProcessProxy(args.api_socket)),
        log_config=None,
        access_log=False,
        # Nothing in eventflow reads the client's address or scheme: rewriting them from
        # X-Forwarded-* would be work for nothing on every delivery.
        proxy_headers=False,
        http=CoalescingHttpProtocol,
        # uvloop where installed: a worker starts no steps, so libuv's fork() costs it
        # nothing, and a delivery took 3-7% less CPU in all (bench/webhooks.py).
        loop="auto",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        ssl_certfile=settings.api.tls_cert_file,
        ssl_keyfile=settings.api.tls_key_file,
    )
    tune_collector_for_intake()
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
