"""The local executor: each step attempt runs as a subprocess on this machine.

It serves the single-process mode, where no cluster is configured. Commands start through
`processes.spawn`, never a shell, so arguments reach the process verbatim
(promise 5). Each attempt runs in its own session, so a timeout, a cancel or a stop kills
its whole process group, grandchildren included. Output (stdout and stderr interleaved)
goes to `work_dir/<run_id>/<step>.<attempt>.log`, capped; a `.pid` file beside it lets
`adopt` find the process again after eventflow restarted.

It does not isolate steps (no container, no resource limits: `image` is ignored), does not
retry them (the run controller does), and keeps no state across restarts but its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from eventflow.errors import PermanentError
from eventflow.executors.processes import Child, spawn
from eventflow.executors.protocol import OUTPUT_FILE_ENV, StepKey, StepPhase, StepSpec, StepUpdate
from eventflow.executors.stepio import (
    OutputPipe,
    check_key,
    create_log,
    exit_outcome,
    read_outputs,
    refusal,
    start_failure,
    start_time,
)

log = structlog.get_logger()

STOPPED_REASON = "interrupted: eventflow stopped while the step ran"
RESTARTED_REASON = "interrupted: eventflow restarted while the step ran"
_ORPHAN_POLL_SECONDS = 0.02  # an orphan is not our child: we cannot wait() for it, only look


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, eq=False)
class _Attempt:
    key: StepKey
    log_path: Path
    pid_path: Path
    output_path: Path
    done: bool = False
    stop_as: tuple[StepPhase, str] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def request_stop(self, phase: StepPhase, reason: str) -> None:
        if self.stop_as is None:
            self.stop_as = (phase, reason)
            self.stop.set()

    def wake(self) -> None:
        # followers hold the current event; a fresh one serves the next change
        self.changed.set()
        self.changed = asyncio.Event()


class LocalExecutor:
    """Runs step attempts as local processes; one terminal update per submitted attempt."""

    def __init__(
        self,
        work_dir: Path,
        *,
        log_tail_lines: int = 20,
        kill_grace_seconds: float = 5.0,
        max_log_bytes: int = 1_048_576,
    ) -> None:
        self._work_dir = work_dir
        self._tail_lines = log_tail_lines
        self._grace = kill_grace_seconds
        self._max_log_bytes = max_log_bytes
        self._attempts: dict[StepKey, _Attempt] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._updates: asyncio.Queue[StepUpdate | None] = asyncio.Queue()
        self._consumed = False
        self._closed = False

    async def start(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        """Stop taking submits, kill what still runs (reported FAILED), end `updates()`."""
        if self._closed:
            return
        self._closed = True
        for attempt in self._attempts.values():
            attempt.request_stop(StepPhase.FAILED, STOPPED_REASON)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._updates.put_nowait(None)

    async def submit(self, step: StepSpec) -> None:
        key = step.key
        if self._closed:
            raise PermanentError(f"step {key}: the local executor is closed; submit before close()")
        if key in self._attempts:
            log.debug("step already submitted", step=str(key))
            return
        attempt = self._new_attempt(key)
        try:
            sink = create_log(attempt.log_path)
        except OSError as error:
            raise PermanentError(
                f"step {key}: cannot write its files under {attempt.log_path.parent}: {error}; "
                "make the executor's work dir writable"
            ) from error
        self._attempts[key] = attempt
        self._spawn(self._run(attempt, step, sink), f"local step {key}")

    def updates(self) -> AsyncIterator[StepUpdate]:
        if self._consumed:
            raise RuntimeError("LocalExecutor.updates() has a single consumer, already iterating")
        self._consumed = True
        return self._drain()

    async def cancel(self, key: StepKey) -> None:
        attempt = self._attempts.get(key)
        if attempt is not None and not attempt.done:
            attempt.request_stop(StepPhase.CANCELLED, "cancelled")

    async def logs(self, key: StepKey, follow: bool = False) -> AsyncIterator[str]:
        path = self._log_path(key)
        if path is None or not path.is_file():
            return
        live = self._attempts.get(key) if follow else None
        with path.open("rb") as source:
            partial = b""
            while True:
                # taken before reading, so a change that lands during the read is not missed
                changed = None if live is None or live.done else live.changed
                lines = (partial + source.read()).split(b"\n")
                partial = lines.pop()
                if changed is None and partial:
                    lines.append(partial)
                for line in lines:
                    yield line.decode("utf-8", "replace")
                if changed is None:
                    return
                await changed.wait()

    async def adopt(self, keys: Sequence[StepKey]) -> None:
        """Kill the attempts a previous eventflow left running and report them FAILED."""
        fresh = [key for key in keys if key not in self._attempts]
        await asyncio.gather(*(self._adopt_one(key) for key in fresh))

    def log_text(self, key: StepKey) -> str | None:
        path = self._log_path(key)
        if path is None or not path.is_file():
            return None
        return path.read_bytes().decode("utf-8", "replace")

    async def _drain(self) -> AsyncIterator[StepUpdate]:
        while (update := await self._updates.get()) is not None:
            yield update

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _log_path(self, key: StepKey) -> Path | None:
        try:
            return self._new_attempt(key).log_path
        except PermanentError:
            return None

    def _new_attempt(self, key: StepKey) -> _Attempt:
        check_key(key)
        run_dir = self._work_dir / key.run_id
        base = f"{key.step}.{key.attempt}"
        return _Attempt(
            key,
            log_path=run_dir / f"{base}.log",
            pid_path=run_dir / f"{base}.pid",
            output_path=run_dir / f"{base}.outputs.json",
        )

    async def _run(self, attempt: _Attempt, step: StepSpec, sink: BinaryIO) -> None:
        try:
            update = await self._execute(attempt, step, sink)
        except Exception as error:
            # every attempt must end in a terminal update, or it stays Running forever
            log.exception("step supervision failed", step=str(attempt.key))
            update = StepUpdate(
                attempt.key, StepPhase.FAILED, _now(), reason=f"executor error: {error!r}"
            )
        finally:
            sink.close()
            attempt.pid_path.unlink(missing_ok=True)
            attempt.done = True
            attempt.wake()
        log.info("step ended", step=str(attempt.key), phase=str(update.phase), reason=update.reason)
        self._updates.put_nowait(update)

    async def _execute(self, attempt: _Attempt, step: StepSpec, sink: BinaryIO) -> StepUpdate:
        key = attempt.key
        refused = refusal(step)
        if refused is not None:
            return StepUpdate(key, StepPhase.FAILED, _now(), reason=refused, log_tail="")
        if attempt.stop_as is not None:  # stopped before it started: start nothing
            phase, why = attempt.stop_as
            return StepUpdate(key, phase, _now(), reason=why, log_tail="")
        env = {
            **os.environ,
            **step.env,
            OUTPUT_FILE_ENV: str(attempt.output_path),
            "EVENTFLOW_RUN_ID": key.run_id,
            "EVENTFLOW_STEP": key.step,
            "EVENTFLOW_ATTEMPT": str(key.attempt),
        }
        read_fd, write_fd = os.pipe()
        try:
            process = spawn(
                [*step.command, *step.args], env=env, cwd=step.working_dir, output_fd=write_fd
            )
        except OSError as error:
            os.close(read_fd)
            failure = start_failure(step.command[0], error)
            return StepUpdate(key, StepPhase.FAILED, _now(), reason=failure, log_tail="")
        finally:
            os.close(write_fd)
        pipe = OutputPipe(sink, self._max_log_bytes, self._tail_lines, attempt.wake)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: pipe, os.fdopen(read_fd, "rb", 0))
        attempt.pid_path.write_text(f"{process.pid} {start_time(process.pid) or '-'}\n")
        log.info("step started", step=str(key), pid=process.pid)
        self._updates.put_nowait(StepUpdate(key, StepPhase.RUNNING, _now()))

        stopped_as = await self._wait(attempt, process, step.timeout_seconds)
        if stopped_as is not None:
            await self._terminate(process.pid, process.wait)
        # like a container, an attempt ends with its main process: leftovers die with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        try:
            async with asyncio.timeout(self._grace):
                await pipe.closed.wait()
        except TimeoutError:
            # a descendant that left the session still holds the pipe: stop reading it
            transport.close()
            await pipe.closed.wait()

        code = await process.wait()
        reason: str | None
        phase, reason = stopped_as or exit_outcome(code)
        outputs, problem = read_outputs(attempt.output_path, pipe.last_line)
        if problem is not None and phase is StepPhase.SUCCEEDED:
            phase, reason = StepPhase.FAILED, problem
        return StepUpdate(key, phase, _now(), code, reason, outputs, pipe.tail())

    async def _wait(
        self, attempt: _Attempt, process: Child, seconds: float | None
    ) -> tuple[StepPhase, str] | None:
        """Wait for the exit, a stop request or the timeout; say why the attempt must stop."""
        exited = self._spawn(process.wait(), f"local step {attempt.key} exit")
        stopped = self._spawn(attempt.stop.wait(), f"local step {attempt.key} stop")
        done, _ = await asyncio.wait(
            {exited, stopped}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (exited, stopped):
            task.cancel()
        await asyncio.gather(exited, stopped, return_exceptions=True)
        if exited in done:
            return None
        if stopped in done:
            return attempt.stop_as
        return StepPhase.TIMED_OUT, f"timed out after {seconds:g}s"

    async def _terminate(
        self, pid: int, ended: Callable[[], Awaitable[object]], *, group: bool = True
    ) -> None:
        """SIGTERM, then SIGKILL once `kill_grace_seconds` passed without `ended` returning."""
        send = os.killpg if group else os.kill
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._grace):
                await ended()
                return
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGKILL)
        await ended()

    async def _adopt_one(self, key: StepKey) -> None:
        attempt = self._new_attempt(key)
        attempt.done = True  # nothing of it can run again: a later submit must be ignored
        self._attempts[key] = attempt
        try:
            pid_text, start = attempt.pid_path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, start = 0, "-"
        if pid > 0 and start != "-" and start_time(pid) == start:

            async def gone() -> None:
                while start_time(pid) == start:  # noqa: ASYNC110  (not our child: no wait())
                    await asyncio.sleep(_ORPHAN_POLL_SECONDS)

            # the group is the step's own only if the step leads it (it was started that way)
            with contextlib.suppress(ProcessLookupError):
                await self._terminate(pid, gone, group=os.getpgid(pid) == pid)
            log.info("orphan step killed", step=str(key), pid=pid)
        attempt.pid_path.unlink(missing_ok=True)
        tail = "\n".join((self.log_text(key) or "").splitlines()[-self._tail_lines :])
        update = StepUpdate(key, StepPhase.FAILED, _now(), reason=RESTARTED_REASON, log_tail=tail)
        self._updates.put_nowait(update)
