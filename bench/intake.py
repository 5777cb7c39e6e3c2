"""Python CPU per signed webhook delivery, in process: `python bench/intake.py [-n N]`.

`WebhookSensor.handle` is timed as `eventflow serve` builds it (the plugin's `create` on a
`spec.webhook` document, GitHub preset, `event.type` templated on a header) for N signed GitHub
push deliveries (tests/fixtures/github/push--payload.json), each with a new X-GitHub-Delivery
so that none is a duplicate. `emit` stamps the event and publishes nothing (the bus's
encoding is a stage of its own below). No HTTP, no socket: what is left is the sensor's own
work. The dedupe state is in memory (`memory`) or the store's SQLite (`sqlite`, a file in a
temporary directory; its reads and writes run on the store's thread, so its wall time is
mostly waiting for that thread, one delivery at a time). Each is given as wall time and as
CPU time (every thread of the process) per delivery.

Then the stages on their own, each over the same N deliveries: the JSON parse of the body,
the type template, the HMAC check, the header filter, the dedupe ledger (hold, record) on
the memory state, and `ReceivedEvent.encode` (what a bus publishes) of the event as the webhook
sensor makes it (its data written as the body's text) and of one whose data is encoded again,
and `ReceivedEvent.decode` of the first (what a bus consumer reads).
Figures are the best of `--repeat` runs, in microseconds per delivery. Logs are at warning
unless `--log-level` says otherwise. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from eventflow.events import Event, ReceivedEvent, keeping_data_text
from eventflow.logs import configure_logging
from eventflow.sensing.protocol import HttpRequest, SensorContext, SensorState
from eventflow.sensing.state import MemorySensorState, utc_now
from eventflow.store.sql import SqlStore
from sensors.webhook import WebhookConfig, plugin
from sensors.webhook.auth import verify_github
from sensors.webhook.deduplicating import DeliveryLedger
from sensors.webhook.headers import without_secrets
from sensors.webhook.normalizing import MediaType, _parse_json

ROOT = Path(__file__).resolve().parent.parent
PUSH = (ROOT / "tests" / "fixtures" / "github" / "push--payload.json").read_bytes()
SECRET = "bench-intake-secret"
SECRET_ENV = "BENCH_INTAKE_SECRET"
SPEC = {
    "path": "github",
    "auth": {"preset": "github", "secrets": [{"env": SECRET_ENV}]},
    "event": {"type": "com.github.{{ headers['x-github-event'] }}", "source": "https://github.com"},
}
SIGNATURE = "sha256=" + hmac.new(SECRET.encode(), PUSH, hashlib.sha256).hexdigest()
JSON = MediaType("application/json", "application/json", None)
STATES = ("memory", "sqlite")


def requests(count: int, run: int) -> list[HttpRequest]:
    """`count` signed push deliveries, headers as the listener passes them (lower case)."""
    return [
        HttpRequest(
            method="POST",
            path="github",
            headers={
                "host": "127.0.0.1:8080",
                "user-agent": "GitHub-Hookshot/044aadd",
                "content-type": "application/json",
                "content-length": str(len(PUSH)),
                "accept": "*/*",
                "x-github-event": "push",
                "x-github-delivery": f"run-{run}-delivery-{number}",
                "x-github-hook-id": "292430182",
                "x-github-hook-installation-target-id": "79929171",
                "x-github-hook-installation-target-type": "repository",
                "x-hub-signature": "sha1=00000000000000000000000000000000000000",
                "x-hub-signature-256": SIGNATURE,
            },
            query={},
            body=PUSH,
        )
        for number in range(count)
    ]


async def stamp(event: Event) -> ReceivedEvent:
    """The emit of the bench: the stamp intake puts on the event; nothing is published."""
    return ReceivedEvent(event, "github", utc_now())


@contextlib.asynccontextmanager
async def sensor_state(kind: str) -> AsyncIterator[SensorState]:
    if kind == "memory":
        yield MemorySensorState()
        return
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as directory:
        store = await SqlStore.open(f"sqlite+aiosqlite:///{directory}/store.db")
        try:
            yield store.sensor_state("github", utc_now)
        finally:
            await store.close()


def per_delivery(started: float, count: int) -> float:
    return (time.perf_counter() - started) / count * 1e6


async def time_handle(kind: str, count: int, repeat: int) -> tuple[float, float]:
    """Best wall and CPU µs per `handle` call over `repeat` runs of `count` deliveries."""
    best, best_cpu = float("inf"), float("inf")
    async with sensor_state(kind) as state:
        config = WebhookConfig.model_validate(SPEC)
        sensor = plugin.create("github", config, SensorContext(state=state, clock=utc_now))
        # Running, as the service runs it: stopping it waits for the ledger's last writes.
        running = asyncio.create_task(sensor.run(stamp), name="bench-sensor")
        for run in range(repeat + 1):  # the first run warms up caches and connections
            batch = requests(count, run)
            started, started_cpu = time.perf_counter(), time.process_time()
            for request in batch:
                reply = await sensor.handle(request, stamp)
                if reply.status != 202:
                    raise SystemExit(f"delivery answered {reply.status}: {reply.body}")
            if run:
                best = min(best, per_delivery(started, count))
                best_cpu = min(best_cpu, (time.process_time() - started_cpu) / count * 1e6)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    return best, best_cpu


def best_of(repeat: int, count: int, stage: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(count):
            stage()
        best = min(best, (time.process_time() - started) / count * 1e6)
    return best


async def best_of_async(
    repeat: int, count: int, stage: Callable[[int, int], Awaitable[None]]
) -> float:
    best = float("inf")
    for run in range(repeat):
        started = time.process_time()
        for number in range(count):
            await stage(run, number)
        best = min(best, (time.process_time() - started) / count * 1e6)
    return best


async def time_stages(count: int, repeat: int) -> dict[str, float]:
    """µs per delivery of each stage of `handle`, alone."""
    config = WebhookConfig.model_validate(SPEC)
    request = requests(1, 0)[0]
    headers = without_secrets(request.headers, config.credential_headers)
    body = _parse_json(PUSH, JSON)
    context = {"headers": headers, "query": {}, "body": body, "path": "github", "method": "POST"}
    secrets = [SECRET.encode()]
    now = datetime.now(UTC)
    ledger = DeliveryLedger("github", MemorySensorState(), config.dedupe.window)

    async def hold_and_record(run: int, number: int) -> None:
        key = f"stage-{run}-{number}"
        async with ledger.holding([key], now) as seen:
            ledger.record({key: "event-id"} if key not in seen else {}, now)

    def event() -> Event:
        return Event(id="e", source="https://github.com", type="com.github.push", data=body)

    received = ReceivedEvent(event(), "github", now)
    as_webhooks_make_it = ReceivedEvent(keeping_data_text(event(), PUSH), "github", now)
    payload = as_webhooks_make_it.encode()
    figures = {
        "parse": best_of(repeat, count, lambda: _parse_json(PUSH, JSON)),
        "template": best_of(repeat, count, lambda: config.event.type.render(context)),
        "hmac": best_of(repeat, count, lambda: verify_github(request.headers, PUSH, secrets, now)),
        "headers": best_of(
            repeat, count, lambda: without_secrets(request.headers, config.credential_headers)
        ),
        "ledger": await best_of_async(repeat, count, hold_and_record),
        "encode (bus)": best_of(repeat, count, as_webhooks_make_it.encode),
        "encode, data again": best_of(repeat, count, received.encode),
        "decode (bus)": best_of(repeat, count, lambda: ReceivedEvent.decode(payload)),
    }
    await ledger.flush()
    return figures


async def bench(args: argparse.Namespace) -> None:
    os.environ[SECRET_ENV] = SECRET
    print(
        f"WebhookSensor.handle, signed GitHub push ({len(PUSH)} bytes), {args.deliveries}"
        f" deliveries, best of {args.repeat}: µs per delivery"
    )
    print(f"  {'':<22} {'wall':>8} {'CPU':>8}")
    for kind in args.states:
        wall, cpu = await time_handle(kind, args.deliveries, args.repeat)
        print(f"  {f'handle ({kind} state)':<22} {wall:8.1f} {cpu:8.1f}")
    print("  stages alone (CPU):")
    for name, figure in (await time_stages(args.deliveries, args.repeat)).items():
        print(f"    {name:<20} {figure:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--deliveries", type=int, default=5000, help="deliveries per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is printed")
    parser.add_argument("--states", nargs="*", choices=STATES, default=list(STATES))
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    configure_logging("console", args.log_level)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
