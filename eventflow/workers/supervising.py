"""The main process's side of the intake workers: start them, keep them running, stop them.

With `api.intake_workers: N`, `eventflow serve` binds the listener itself and hands it to N
worker processes (`worker.py`), which answer webhooks; the main process serves the REST API
to them on a Unix socket and runs the engine. Webhook intake then runs on as many cores as
there are workers, beside the engine, instead of sharing one interpreter with it.

The workers start after the service, and the service counts as started only once every
worker is connected (a listener nobody accepts on would only queue connections). A worker
that dies is started again, with backoff. On stop they go first, and answer what they hold,
while the main process still takes their events; then the service stops. A worker runs in a
session of its own, so a Ctrl-C at the terminal reaches the main process alone, which stops
the workers in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from pathlib import Path

import structlog

from eventflow.bus.connecting import backoff_delays
from eventflow.errors import ConfigError
from eventflow.sensing.limiting import ProcessRateLimits
from eventflow.sensing.protocol import SensorState
from eventflow.service import Service, utc_now
from eventflow.workers.channel import MainEnd
from eventflow.workers.store import serve_store

log = structlog.get_logger()

START_TIMEOUT_SECONDS = 60.0
RELOAD_TIMEOUT_SECONDS = 60.0
STEADY_SECONDS = 30.0
"""A worker that ran this long before dying is restarted at once, not after a backoff."""


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket the workers share; ConfigError naming the address if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {error.strerror}; choose another api.port or stop"
            " what uses it"
        ) from error
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


class IntakeWorkers:
    """`count` worker processes on `listener`; the files they share live in `directory`."""

    def __init__(
        self,
        count: int,
        listener: socket.socket,
        *,
        directory: Path,
        service: Service,
        dev: bool = False,
    ) -> None:
        self._count = count
        self._listener = listener
        self.directory = directory
        self._settings = service.settings
        self._paths = service.resource_paths
        self._dev = dev
        states: dict[str, SensorState] = {}

        def state_of(sensor: str) -> SensorState:
            if sensor not in states:
                states[sensor] = service.store.sensor_state(sensor, utc_now)
            return states[sensor]

        self._channel = MainEnd(
            directory / "channel.sock",
            service.publish_for_worker,
            serve_store(state_of, lambda: service.store.webhooks, ProcessRateLimits()),
        )
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def api_socket(self) -> Path:
        """Where the main process serves the REST API to the workers."""
        return self.directory / "api.sock"

    async def start(self) -> None:
        (self.directory / "settings.json").write_text(
            self._settings.model_dump_json(exclude_unset=True)
        )
        await self._channel.start()
        self._tasks = [
            asyncio.create_task(self._keep_running(index), name=f"intake-worker-{index}")
            for index in range(self._count)
        ]
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                await self._channel.wait_ready(self._count)
        except TimeoutError:
            await self.stop(grace_seconds=0)
            raise ConfigError(
                f"{self._count - self._channel.ready} of {self._count} intake workers did"
                f" not start within {START_TIMEOUT_SECONDS:g} seconds; their log above says why"
            ) from None
        log.info("intake workers started", workers=self._count)

    async def reload(self) -> None:
        """Have every worker apply the configuration the main process now runs on."""
        await self._channel.reload_workers(RELOAD_TIMEOUT_SECONDS)

    async def stop(self, grace_seconds: float) -> None:
        """Stop the workers (they answer what they hold first); kill any still running after
        `grace_seconds` and a margin."""
        self._stopping = True
        running = [process for process in self._processes.values() if process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        waiting = [asyncio.create_task(process.wait()) for process in running]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=grace_seconds + 10)
            for process in running:
                if process.returncode is None:
                    log.error("intake worker did not stop; killing it", pid=process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*late)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for process in self._processes.values():  # one started while this stop began
            if process.returncode is None:
                process.kill()
                await process.wait()
        await self._channel.close()
        self._listener.close()
        log.info("intake workers stopped")

    def _command(self, index: int) -> list[str]:
        command = [sys.executable, "-m", "eventflow.workers.worker", "--index", str(index)]
        command += ["--listener-fd", str(self._listener.fileno())]
        command += ["--channel", str(self.directory / "channel.sock")]
        command += ["--api-socket", str(self.api_socket)]
        command += ["--settings", str(self.directory / "settings.json")]
        if self._dev:
            command.append("--dev")
        return command + [str(path) for path in self._paths]

    async def _keep_running(self, index: int) -> None:
        delays = backoff_delays(initial=0.5, cap=10.0)
        while not self._stopping:
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *self._command(index), pass_fds=(self._listener.fileno(),), start_new_session=True
            )
            self._processes[index] = process
            code = await process.wait()
            if self._stopping:
                return
            if time.monotonic() - started >= STEADY_SECONDS:
                delays = backoff_delays(initial=0.5, cap=10.0)
            delay = next(delays)
            log.error(
                "intake worker exited; starting another",
                worker=index,
                pid=process.pid,
                exit_code=code,
                restart_in=delay,
            )
            await asyncio.sleep(delay)
