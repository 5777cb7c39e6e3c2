"""End-to-end figures of the embedded server: `python bench/e2e.py`.

Starts `eventflow serve` (real uvicorn, one worker, SQLite, local steps) on a loopback port
and measures, with a real HTTP client:
- idle RSS of the server process;
- webhook POST -> run started latency (p50/p99), one event at a time (not saturated);
- sustained webhook intake (events/s) into a sensor whose events match no trigger;
- three-step DAG runs of trivial commands started and finished per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

import httpx

RESOURCES = """
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: runs}
spec: {webhook: {path: runs}}
---
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: intake}
spec: {webhook: {path: intake}}
---
apiVersion: eventflow.io/v1alpha1
kind: Trigger
metadata: {name: on-run}
spec:
  events: {e: {sensor: runs, filter: "data.n >= 0"}}
  workflow: three
---
apiVersion: eventflow.io/v1alpha1
kind: Trigger
metadata: {name: never}
spec:
  events: {e: {sensor: intake, type: no.such.type}}
  workflow: three
---
apiVersion: eventflow.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: three}
spec:
  steps:
    - {name: a, command: ["true"]}
    - {name: b, depends: [a], command: ["true"]}
    - {name: c, depends: [b], command: ["true"]}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def wait_started(client: httpx.AsyncClient, count: int) -> list[dict[str, object]]:
    while True:
        runs = (await client.get("/api/v1/runs", params={"limit": 1000})).json()["runs"]
        if len(runs) >= count and all(run["started_at"] for run in runs[:count]):
            return list(runs)
        await asyncio.sleep(0.005)


async def latency(client: httpx.AsyncClient, samples: int) -> list[float]:
    """POST one event, wait until its run started; started_at - send time, in ms."""
    results = []
    for n in range(samples):
        sent = time.time()
        response = await client.post("/webhooks/runs", json={"n": n})
        response.raise_for_status()
        runs = await wait_started(client, n + 1)
        started = datetime.fromisoformat(str(runs[0]["started_at"])).timestamp()
        results.append((started - sent) * 1000)
    return results


async def intake(client: httpx.AsyncClient, total: int, concurrency: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            response = await client.post("/webhooks/intake", json={"n": n})
            assert response.status_code == 202, response.text

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - began)


async def runs_per_second(client: httpx.AsyncClient, total: int, offset: int) -> float:
    began = time.perf_counter()
    await asyncio.gather(
        *(client.post("/webhooks/runs", json={"n": offset + n}) for n in range(total))
    )
    while True:
        finished = (
            await client.get("/api/v1/runs", params={"state": "Succeeded", "limit": 1000})
        ).json()["runs"]
        if len(finished) >= offset + total:
            break
        await asyncio.sleep(0.05)
    return total / (time.perf_counter() - began)


async def measure(url: str, pid: int, args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.sleep(2)
        print(f"idle RSS: {rss_mib(pid):.1f} MiB")
        lat = await latency(client, args.latency_samples)
        print(
            f"POST -> run started: p50 {statistics.median(lat):.1f} ms,"
            f" p99 {percentile(lat, 0.99):.1f} ms ({len(lat)} events, one at a time)"
        )
        rate = await intake(client, args.intake_events, args.concurrency)
        print(
            f"webhook intake: {rate:,.0f} events/s"
            f" ({args.intake_events} events, {args.concurrency} connections)"
        )
        runs = await runs_per_second(client, args.runs, args.latency_samples)
        print(f"three-step runs: {runs:,.1f} runs/s started and finished ({args.runs} runs)")
        print(f"RSS after load: {rss_mib(pid):.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--intake-events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        resources = Path(tmp) / "resources"
        resources.mkdir()
        (resources / "bench.yaml").write_text(textwrap.dedent(RESOURCES))
        port = free_port()
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("eventflow")),
                "serve",
                str(resources),
                "--port",
                str(port),
                "--data-dir",
                str(Path(tmp) / "data"),
            ],
            env={**os.environ, "EVENTFLOW_LOG_LEVEL": "warning"},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.05)
            asyncio.run(measure(url, server.pid, args))
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
