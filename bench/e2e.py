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
import json
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
from typing import Any

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
    """The value below which `fraction` of the sorted values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Connection:
    """A keep-alive HTTP/1.1 connection that POSTs JSON: far lighter than a general client,
    so that the client is not what the benchmark measures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, payload: object) -> tuple[int, bytes]:
        body = json.dumps(payload).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def get_json(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await client.get(path)
    return dict(response.json()) if response.status_code == 200 else {}


async def latency(port: int, client: httpx.AsyncClient, samples: int) -> list[float]:
    """POST one event, wait until its run started: server's started_at - send time, in ms."""
    connection = await Connection.open(port)
    results = []
    for n in range(samples):
        sent = time.time()
        status, body = await connection.post("/webhooks/runs", {"n": n})
        assert status == 202, body
        event_id = json.loads(body)["id"]
        started = None
        while started is None:
            # Polling is only to learn when to look; the figure is the server's timestamp.
            await asyncio.sleep(0.05)
            decisions = (await get_json(client, f"/api/v1/events/{event_id}")).get("decisions")
            if decisions:
                run = await get_json(client, f"/api/v1/runs/{decisions[0]['run_id']}")
                started = run.get("started_at")
        results.append((datetime.fromisoformat(started).timestamp() - sent) * 1000)
        await asyncio.sleep(0.02)  # not saturated: one event at a time, with a pause
    connection.close()
    return results


async def post_many(port: int, path: str, total: int, concurrency: int, first: int = 0) -> float:
    """POST `total` events over `concurrency` connections; events/s."""
    numbers = iter(range(first, first + total))

    async def worker() -> None:
        connection = await Connection.open(port)
        for n in numbers:
            status, body = await connection.post(path, {"n": n})
            assert status == 202, body
        connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - began)


async def runs_per_second(port: int, client: httpx.AsyncClient, total: int, first: int) -> float:
    """Start `total` three-step runs at once; runs/s until the last one succeeded."""
    began = time.perf_counter()
    await post_many(port, "/webhooks/runs", total, 16, first)
    while True:
        counts = (await get_json(client, "/api/v1/stats"))["runs"]
        assert counts["Failed"] == 0, "a benchmark run failed"
        if counts["Succeeded"] >= first + total:
            break
        await asyncio.sleep(0.05)
    return total / (time.perf_counter() - began)


async def measure(port: int, pid: int, args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        await asyncio.sleep(2)
        print(f"idle RSS: {rss_mib(pid):.1f} MiB")
        lat = await latency(port, client, args.latency_samples)
        print(
            f"POST -> run started: p50 {statistics.median(lat):.1f} ms,"
            f" p99 {percentile(lat, 0.99):.1f} ms ({len(lat)} events, one at a time)"
        )
        rate = await post_many(port, "/webhooks/intake", args.intake_events, args.concurrency)
        print(
            f"webhook intake: {rate:,.0f} events/s"
            f" ({args.intake_events} events, {args.concurrency} connections)"
        )
        runs = await runs_per_second(port, client, args.runs, args.latency_samples)
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
            asyncio.run(measure(port, server.pid, args))
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
