"""What a local step attempt writes and what its end means: the capped log, outputs, exit.

The local executor (`local.py`) owns processes and their lifecycle; this module holds the
parts of an attempt that are about its files and its result, so they read, and are tested,
apart from the asyncio plumbing: the output pipe that caps the log and keeps a tail, reading
`$EVENTFLOW_OUTPUT_FILE` or the last JSON line, the wording of an exit code or a signal, and
the refusals given before any process starts. It starts and kills nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from eventflow.errors import PermanentError
from eventflow.executors.protocol import StepKey, StepPhase, StepSpec

_TAIL_LINE_BYTES = 4096  # a log tail travels to the store: one huge line must not bloat it


def create_log(path: Path) -> BinaryIO:
    """Open an attempt's log for writing; its run's directory is made on first use only
    (file system calls on the event loop are what a step's start costs most)."""
    try:
        return path.open("wb", buffering=0)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("wb", buffering=0)


def start_time(pid: int) -> str | None:
    """The kernel's start time of a live process (None if gone or a zombie): pid reuse guard."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return None if fields[0] == "Z" else fields[19]


def read_outputs(path: Path, last_line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """Outputs and, if the outputs file is unusable, the reason the attempt fails."""
    data = path.read_bytes() if path.is_file() else b""
    if not data.strip():
        with contextlib.suppress(ValueError, RecursionError):
            value = json.loads(last_line)
            return (value if isinstance(value, dict) else None), None
        return None, None
    advice = 'write one JSON object there, such as {"rows": 3}'
    try:
        value = json.loads(data)
    except ValueError as error:
        return None, f"outputs file is not a JSON object: {path}: {error}; {advice}"
    if not isinstance(value, dict):
        kinds: dict[type, str] = {bool: "a boolean", int: "a number", float: "a number"}
        kind = {**kinds, list: "an array", str: "a string"}.get(type(value), "null")
        return None, f"outputs file is not a JSON object: {path} holds {kind}; {advice}"
    return value, None


def exit_outcome(code: int) -> tuple[StepPhase, str | None]:
    if code == 0:
        return StepPhase.SUCCEEDED, None
    if code > 0:
        return StepPhase.FAILED, f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return StepPhase.FAILED, f"killed by signal {name}"


def start_failure(command: str, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"command not found: {command!r}"
    if isinstance(error, PermissionError):
        return (
            f"permission denied: {command!r} is not executable; "
            "make it executable (chmod +x) or run it through its interpreter"
        )
    return f"could not start {command!r}: {error}"


def refusal(step: StepSpec) -> str | None:
    """Why the attempt cannot start at all, before a process is tried."""
    if not step.command:
        return "command is empty: a local step needs a command to run"
    if step.working_dir is not None and not Path(step.working_dir).is_dir():
        return (
            f"working directory does not exist: {step.working_dir!r}; "
            "create it or change the step's workingDir"
        )
    return None


def check_key(key: StepKey) -> None:
    # run id and step name become file names: they must not climb out of work_dir
    for part in (key.run_id, key.step):
        if not part or part in {".", ".."} or "/" in part or "\0" in part:
            raise PermanentError(
                f"step {key}: {part!r} cannot be a file name under the work dir; "
                "use a run id and a step name without '/' that are not '.' or '..'"
            )


class OutputPipe(asyncio.Protocol):
    """Drains one attempt's output pipe into its capped log file, never pausing the pipe."""

    def __init__(
        self, sink: BinaryIO, max_bytes: int, tail_lines: int, wake: Callable[[], None]
    ) -> None:
        self._sink = sink
        self._room = max_bytes
        self._max_line = max_bytes
        self._wake = wake
        self._tail: deque[bytes] = deque(maxlen=tail_lines)
        self._partial = b""
        self.last_line = b""  # the last non-empty line: outputs when no outputs file was written
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        if self._room >= 0:
            self._sink.write(data[: self._room])
            self._room -= len(data)
            if self._room < 0:
                self._sink.write(
                    b"\n[eventflow: log capped here; the rest of the output dropped]\n"
                )
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-self._max_line :]
        for line in lines:
            self._add(line)
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial:
            self._add(self._partial)
        self.closed.set()
        self._wake()

    def _add(self, line: bytes) -> None:
        self._tail.append(line[:_TAIL_LINE_BYTES])
        if line.strip():
            self.last_line = line

    def tail(self) -> str:
        return "\n".join(line.decode("utf-8", "replace") for line in self._tail)
