"""Child processes for the local executor, their exit learned without a thread per child.

asyncio's subprocess support in Python 3.11 watches each child with a thread of its own
and builds a transport around it; starting a step cost more in that machinery than in
fork and exec. Here a child is a plain `subprocess.Popen` (no shell: arguments are data),
and its exit reaches the event loop through a pidfd (Linux 5.3+). Where pidfds are missing,
one thread waits for the child instead. This module does not read the child's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence


class Child:
    """A started process; `wait()` gives its exit code (negative: killed by that signal)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._exited = asyncio.Event()
        self._watch()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        await self._exited.wait()
        code = self._popen.returncode
        assert code is not None  # set before _exited
        return code

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            task = loop.create_task(asyncio.to_thread(self._popen.wait), name=f"wait-{self.pid}")
            task.add_done_callback(lambda _: self._exited.set())
            return

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._popen.wait()  # the child has exited: this reaps it without blocking
            self._exited.set()

        loop.add_reader(pidfd, reap)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    output_fd: int,
) -> Child:
    """Start `argv` in a session of its own, stdout and stderr to `output_fd`, no stdin.

    Raises OSError (FileNotFoundError, PermissionError, ...) when it cannot start.
    """
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=output_fd,
        stderr=output_fd,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        return Child(popen)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()
        raise
