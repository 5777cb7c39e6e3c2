"""Registration and reload costs: `python bench/registration.py [--sensors N] [--rounds R]`.

A real server (uvicorn on 127.0.0.1, SQLite store, memory bus) starts on N YAML webhook
sensors. It prints the p50/p99 latency of R `POST /api/v1/webhooks` (each stored, then served
at once), of R reloads that change nothing, and of R reloads that change one sensor. Then it
measures webhook deliveries/s (16 senders) without reloads and while reloads run back to back,
and counts the deliveries that were not answered 202 (none may be dropped by a swap).

Nothing here is asserted: these are figures for the closing note.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.conftest import serve

SENSOR = """\
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {{name: s{number}}}
spec:
  webhook: {{path: p{number}, event: {{type: {kind}}}}}
"""


def write(folder: Path, sensors: int, changed: int | None = None) -> None:
    documents = [
        SENSOR.format(number=number, kind="changed" if number == changed else "plain")
        for number in range(sensors)
    ]
    (folder / "sensors.yaml").write_text("---\n".join(documents))


async def timed(rounds: int, action: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    """p50 and p99 of `action`, in milliseconds."""
    samples = []
    for number in range(rounds):
        start = time.perf_counter()
        await action(number)
        samples.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49], cuts[98]


async def deliveries(
    client: httpx.AsyncClient, seconds: float, senders: int, *, reloading: bool
) -> tuple[int, int, int]:
    """(deliveries answered 202, other answers, reloads), with reloads back to back or none."""
    stop = time.perf_counter() + seconds
    counts = {"ok": 0, "other": 0, "reloads": 0}

    async def send(worker: int) -> None:
        while time.perf_counter() < stop:
            answer = await client.post(f"/webhooks/p{worker}", json={"n": worker})
            counts["ok" if answer.status_code == 202 else "other"] += 1

    async def reload() -> None:
        while time.perf_counter() < stop:
            answer = await client.post("/api/v1/reload")
            answer.raise_for_status()
            counts["reloads"] += 1

    reloads = [reload()] if reloading else []
    await asyncio.gather(*reloads, *(send(worker) for worker in range(senders)))
    return counts["ok"], counts["other"], counts["reloads"]


async def main(sensors: int, rounds: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory) / "resources"
        folder.mkdir()
        write(folder, sensors)
        async with serve(folder, Path(directory) / "data") as server:
            client = server.client

            async def register(number: int) -> None:
                body = {"name": f"r{number}", "path": f"r{number}"}
                (await client.post("/api/v1/webhooks", json=body)).raise_for_status()

            async def reload_same(_: int) -> None:
                (await client.post("/api/v1/reload")).raise_for_status()

            async def reload_changed(number: int) -> None:
                write(folder, sensors, changed=number % sensors)
                (await client.post("/api/v1/reload")).raise_for_status()

            print(f"{sensors} YAML webhook sensors, {rounds} rounds each (ms, p50 / p99)")
            for label, action in (
                ("register a webhook (POST)", register),
                ("reload, nothing changed", reload_same),
                ("reload, one sensor changed", reload_changed),
            ):
                p50, p99 = await timed(rounds, action)
                print(f"  {label:<28} {p50:7.2f} / {p99:7.2f}")
            write(folder, sensors)
            for reloading in (False, True):
                ok, other, reloads = await deliveries(client, seconds, 16, reloading=reloading)
                print(
                    f"  deliveries in {seconds:.0f} s with {reloads} reloads:"
                    f" {ok / seconds:,.0f}/s answered 202, {other} answered otherwise"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.sensors, arguments.rounds, arguments.seconds))
