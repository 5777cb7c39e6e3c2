"""A kubelet for the Kubernetes API emulator: runs each created Job's container as a local
process, so the DAG tests that run on the local executor run unchanged on the Kubernetes one.

For every Job the emulator creates, `Kubelet` starts the container's command and args with
its plain env values (no image: the test's own interpreter runs it), marks the Job active,
and when the process ends completes or fails the Job with the exit code, the log and the
termination message, which the step writes to $EVENTFLOW_OUTPUT_FILE (pointed at a file in
place of /dev/termination-log). activeDeadlineSeconds kills the process and fails the Job
DeadlineExceeded; deleting the Job kills it. It does not pull images, mount volumes or
resolve env references: tests that need those assert the Job body instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from eventflow.executors.protocol import OUTPUT_FILE_ENV
from tests.k8s_emulator import KubeEmulator

# What a real kubelet reports when the container's command cannot be started.
START_ERROR_CODE = 128
TERMINATION_MESSAGE_BYTES = 4096


class Kubelet:
    def __init__(self, emulator: KubeEmulator, workdir: Path) -> None:
        self._emulator = emulator
        self._workdir = workdir
        self._runs: dict[str, asyncio.Task[None]] = {}
        emulator.on_created = self._created
        emulator.on_deleted = self._deleted

    async def close(self) -> None:
        """Kill every process still running."""
        for task in self._runs.values():
            task.cancel()
        await asyncio.gather(*self._runs.values(), return_exceptions=True)

    def _created(self, name: str) -> None:
        self._runs[name] = asyncio.create_task(self._run(name), name=f"kubelet {name}")

    def _deleted(self, name: str) -> None:
        task = self._runs.get(name)
        if task is not None:
            task.cancel()

    async def _run(self, name: str) -> None:
        job = self._emulator.jobs[name]
        container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
        message_file = self._workdir / f"{name}.termination-log"
        env = {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}
        env[OUTPUT_FILE_ENV] = str(message_file)
        argv = [*container.get("command", ()), *container.get("args", ())]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=os.environ | env,
                cwd=container.get("workingDir"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as error:
            await self._emulator.fail(name, START_ERROR_CODE, "StartError", message=str(error))
            return
        await self._emulator.start(name)
        deadline = job["spec"].get("activeDeadlineSeconds")
        try:
            async with asyncio.timeout(deadline):
                log, _ = await process.communicate()
        except TimeoutError:
            await self._kill(process)
            await self._emulator.deadline_exceeded(name)
            return
        except asyncio.CancelledError:
            await self._kill(process)
            raise
        message = message_file.read_text() if message_file.exists() else ""
        text = log.decode("utf-8", "replace")
        code = process.returncode or 0
        if code == 0:
            await self._emulator.succeed(name, message=message, log=text)
            return
        # terminationMessagePolicy FallbackToLogsOnError: an empty message becomes the log's end
        message = message or text[-TERMINATION_MESSAGE_BYTES:]
        # a process killed by signal N exits, as a container does, with 128 + N
        await self._emulator.fail(name, code if code > 0 else 128 - code, message=message, log=text)

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
