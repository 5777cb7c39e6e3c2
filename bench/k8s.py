"""Figures of the Kubernetes executor: `python -m bench.k8s` (from the repository root).

The real RunController and KubernetesExecutor (SQLite store in a temporary directory) drive
the Kubernetes API emulator of tests/k8s_emulator.py over loopback HTTP; the emulator runs
in a child process, so its work is not counted as eventflow's. A job controller starts each
Job as soon as it is created and completes it `--step-seconds` later. Logs at warning level.

1. fan-out: one run of `--steps` independent steps, client limit QPS 50 / burst 100:
   the time to create every Job (target: 1,000 in <= 21 s), Jobs created/s, and the API
   requests per step by verb, watch events included.
2. the same fan-out with no client limit to speak of: what eventflow itself sustains.
3. latency: `--steps` events, each starting a one-step run, one every `--interval-ms` (50),
   no client limit: from the run handed to the controller (stored, as the dispatcher does)
   to the Job's create request received by the API server, p50 / p99.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient, Configuration

from eventflow.events import Event, ReceivedEvent
from eventflow.executors.kubernetes import KubernetesExecutor
from eventflow.executors.manifests import RUN_LABEL, JobOptions
from eventflow.logs import configure_logging
from eventflow.resources.models import WorkflowSpec
from eventflow.runs.runner import RunController
from eventflow.store.records import NewRun, RunRecord
from eventflow.store.sql import SqlStore
from tests.k8s_emulator import running_emulator

UNLIMITED = 1e9


@dataclass
class Seen:
    """What the API server saw, handed back when the cluster stops."""

    verbs: dict[str, int]
    watch_events: int
    creates: list[float]  # time.monotonic() of each create request received
    first_create: dict[str, float]  # by run label


class Cluster:
    """The emulator in a child process (so its work is not eventflow's), with a job
    controller that completes each Job `step_seconds` after it was created."""

    def __init__(self, step_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, step_seconds), daemon=True)

    async def start(self) -> str:
        self._process.start()
        url: str = await asyncio.to_thread(self._conn.recv)
        return url

    async def stop(self) -> Seen:
        self._conn.send("stop")
        seen: Seen = await asyncio.to_thread(self._conn.recv)
        await asyncio.to_thread(self._process.join, 10)
        return seen


def _serve(conn: Connection, step_seconds: float) -> None:
    asyncio.run(_serving(conn, step_seconds))


async def _serving(conn: Connection, step_seconds: float) -> None:
    creates: list[float] = []
    first: dict[str, float] = {}
    tasks: set[asyncio.Task[None]] = set()
    async with running_emulator() as emulator:

        async def run_job(name: str) -> None:
            await emulator.start(name)
            await asyncio.sleep(step_seconds)
            await emulator.succeed(name, message='{"ok": true}', log="done\n")

        def created(name: str) -> None:
            now = time.monotonic()
            creates.append(now)
            first.setdefault(emulator.jobs[name]["metadata"]["labels"][RUN_LABEL], now)
            task = asyncio.get_running_loop().create_task(run_job(name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        emulator.on_created = created
        conn.send(emulator.url)
        await asyncio.to_thread(conn.recv)
        conn.send(Seen(dict(emulator.verbs()), emulator.watch_events, creates, first))


def fan_out(steps: int) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "steps": [
                {"name": f"s{i}", "image": "busybox:1.36", "command": ["true"]}
                for i in range(steps)
            ]
        }
    )


async def store_runs(store: SqlStore, spec: WorkflowSpec, count: int) -> list[RunRecord]:
    """`count` runs of `spec`, stored as the dispatcher stores them for an event each."""
    records: list[RunRecord] = []
    dumped = spec.model_dump(mode="json", by_alias=True)
    names = tuple(step.name for step in spec.steps)
    for index in range(count):
        event = ReceivedEvent(
            Event(id=f"e{index}", source="/bench", type="bench"), "bench", datetime.now(UTC)
        )
        run = NewRun(
            id=f"run{index:05d}",
            trigger="bench",
            workflow="bench",
            dedupe_key=f"k{index}",
            arguments={},
            workflow_spec=dumped,
            step_names=names,
        )
        records += (await store.record_dispatch(event, [], [run], datetime.now(UTC))).created
    return records


@asynccontextmanager
async def controller_for(
    cluster: Cluster, directory: Path, qps: float, burst: int
) -> AsyncIterator[tuple[RunController, SqlStore]]:
    url = await cluster.start()
    store = await SqlStore.open(f"sqlite+aiosqlite:///{directory}/eventflow.db")

    async def api_client() -> ApiClient:
        return ApiClient(Configuration(host=url))

    executor = KubernetesExecutor(
        JobOptions(namespace="eventflow", ttl_seconds_after_finished=600),
        api_client_factory=api_client,
        qps=qps,
        burst=burst,
    )
    await executor.start()
    controller = RunController(store, executor, lambda: datetime.now(UTC), dict)
    await controller.start()
    try:
        yield controller, store
    finally:
        await controller.close(1.0)
        await store.close()


async def wait_finished(store: SqlStore, runs: int, limit_seconds: float) -> None:
    """Until `runs` runs succeeded; counted, since reading a 1,000-step run is not free."""
    async with asyncio.timeout(limit_seconds):
        while (counted := await store.count_runs("bench"))["Succeeded"] < runs:
            if counted["Failed"] or counted["Cancelled"]:
                raise RuntimeError(f"runs ended badly: {counted}")
            await asyncio.sleep(0.05)


async def bench_fan_out(steps: int, qps: float, burst: int, step_seconds: float) -> None:
    cluster = Cluster(step_seconds)
    limit = "none" if qps >= UNLIMITED else f"QPS {qps:g} / burst {burst}"
    with tempfile.TemporaryDirectory() as directory:
        async with controller_for(cluster, Path(directory), qps, burst) as (controller, store):
            [record] = await store_runs(store, fan_out(steps), 1)
            started, cpu = time.monotonic(), time.process_time()
            controller.admit(record)
            await wait_finished(store, 1, limit_seconds=600)
            finished, cpu = time.monotonic() - started, time.process_time() - cpu
        seen = await cluster.stop()
    creates = len(seen.creates)
    create_time = seen.creates[-1] - started
    print(f"\nfan-out: 1 run x {steps} steps, client limit {limit}, steps run {step_seconds:g} s")
    print(f"  Jobs created: {creates} in {create_time:.2f} s = {creates / create_time:.1f}/s")
    print(f"  run finished after {finished:.2f} s")
    print(
        f"  eventflow's CPU time (this process): {cpu:.2f} s, {cpu / steps * 1000:.2f} ms per"
        f" step: {steps / cpu:.0f} steps/s on one core"
    )
    print("  API requests per step:")
    for verb in ("create", "get", "list pods", "read log", "delete", "list", "watch"):
        count = seen.verbs.get(verb, 0)
        print(f"    {verb:<12} {count / steps:.3f}  ({count} in all)")
    print(f"    {'watch events':<12} {seen.watch_events / steps:.3f}  ({seen.watch_events} in all)")


async def bench_latency(events: int, interval: float) -> None:
    cluster = Cluster(0.0)
    admitted: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        async with controller_for(cluster, Path(directory), UNLIMITED, 10**9) as (
            controller,
            store,
        ):
            records = await store_runs(store, fan_out(1), events)
            for record in records:
                admitted[record.id] = time.monotonic()
                controller.admit(record)
                await asyncio.sleep(interval)
            await wait_finished(store, len(admitted), limit_seconds=600)
        seen = await cluster.stop()
    latencies = sorted((seen.first_create[run] - admitted[run]) * 1000 for run in admitted)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"\nlatency: {events} events, one-step runs, one every {interval * 1000:g} ms")
    print(
        "  run handed to the controller -> Job create request received:"
        f" p50 {statistics.median(latencies):.2f} ms, p99 {p99:.2f} ms,"
        f" max {latencies[-1]:.2f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    parser.add_argument("--qps", type=float, default=50.0)
    parser.add_argument("--burst", type=int, default=100)
    args: Any = parser.parse_args(argv)
    configure_logging("json", "warning")  # a line per step would measure the terminal
    print(f"load average before: {' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    asyncio.run(bench_fan_out(args.steps, args.qps, args.burst, args.step_seconds))
    asyncio.run(bench_fan_out(args.steps, UNLIMITED, 10**9, args.step_seconds))
    asyncio.run(bench_latency(args.steps, args.interval_ms / 1000))


if __name__ == "__main__":
    main()
