"""Signed GitHub-style webhook deliveries per second, end to end: `python bench/webhooks.py`.

Each target is a real server process on a loopback port, driven by `wrk` (HTTP/1.1 keep-alive,
`--latency` for p50/p99) with the same request: the push fixture signed with the endpoint's
secret (X-Hub-Signature-256), a new X-GitHub-Delivery per request so that none is a duplicate.

- bare:    a FastAPI app under the same uvicorn settings whose POST only answers 202, on the
           asyncio loop as `eventflow serve`'s main process runs; with intake workers also
           `bare/uvloop`, on uvloop as the workers run, their baseline;
- memory:  `eventflow serve` on the embedded bus; 202 once the bus holds the event, the engine
           recording every event in SQLite in the same process meanwhile;
- jetstream: the same on NATS JetStream: by default a nats-server of its own (file store in a
           temporary directory), so that its streams and its dead-letter subject cannot collide
           with anyone else's; `--nats URL` uses a running server instead (a fresh stream and
           its dead-letter stream, both deleted afterwards).

`--workers 0 1` measures memory and jetstream once per count of intake workers
(`api.intake_workers`): with 0 one process answers the webhooks and runs the engine; with N,
N processes answer the webhooks and the main process runs the engine.

`--connections 32 64` (the default) loads each server with each count of keep-alive
connections in turn, and prints each target's peak: its best median rate over the counts, set
against its baseline's best. One process answering 202 is busy with 32 requests in flight; an
eventflow delivery crosses processes (intake worker, main process, back), so it takes more in
flight before its busiest process has no idle gaps. p99 is for the count it is printed with.

`--rounds N` measures every target N times, in turn, and prints the medians: on a host whose
neighbours come and go, a ratio to bare taken within each round moves less than one taken
between the first target and the last.

The server and wrk share this machine's cores, as they would on a small node; run with
nothing else busy. Beside the rate and latency:
- the CPU time the server's processes (the main one and its intake workers) spent per
  delivery: steadier than a rate on a machine whose neighbours take its cores now and then;
- of it, the main process's (`main`): set against the workers' share, it tells which side
  runs out of its core first;
- the events the engine stored per second meanwhile (`stored/s`, read from the SQLite file):
  a 202 only says the bus holds the event, so a rate the engine does not keep up with is one
  the bus buffers until it is full, not one that lasts.

Nothing is asserted: figures are printed for the closing note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats as nats_client
import uvicorn
from fastapi import FastAPI, Response
from nats.js.errors import NotFoundError

ROOT = Path(__file__).resolve().parent.parent
PUSH = (ROOT / "tests" / "fixtures" / "github" / "push--payload.json").read_bytes()
SECRET = "bench-webhook-secret"
SENSOR = """
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: github}
spec:
  webhook:
    path: github
    auth: {preset: github, secrets: [{env: BENCH_GITHUB_SECRET}]}
    event: {type: "com.github.{{ headers['x-github-event'] }}", source: https://github.com}
"""
# wrk's Lua: one request template, a delivery id unique per run (its argument), thread and
# request, so that the warm-up's deliveries are not repeated as redeliveries by the measured run.
WRK_SCRIPT = """
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  prefix = args[1] .. "-" .. tostring(tid) .. "-"
end
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "%(signature)s"
function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. counter
  return wrk.format(nil, "/webhooks/github")
end
"""
EVENTFLOW = str(Path(sys.executable).with_name("eventflow"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bare_app() -> FastAPI:
    """The reference: FastAPI answering 202 to the same POST without looking at it."""
    app = FastAPI()

    @app.post("/webhooks/github")
    async def github() -> Response:
        return Response(b'{"id":"x"}', status_code=202, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def serve_bare(port: int, loop: str) -> None:
    uvicorn.run(
        bare_app(), host="127.0.0.1", port=port, log_config=None, access_log=False, loop=loop
    )


# The bare endpoint's targets and the event loop each runs on.
BARE_LOOPS = {"bare": "asyncio", "bare/uvloop": "uvloop"}


@dataclass
class Figures:
    name: str
    connections: int
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    not_2xx: int
    cpu_us: float  # CPU time of the server's processes per request
    main_cpu_us: float  # of which the main process's: the engine's, with intake workers
    stored_rate: float | None  # events the engine stored per second meanwhile


def data_dir(work: Path, kind: str, workers: int) -> Path:
    return work / f"data-{kind}-{workers}"


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server not ready:\n{log.read_text()}")


def start(
    kind: str, workers: int, work: Path, port: int, nats: str, stream: str
) -> subprocess.Popen[bytes]:
    log = work / f"{kind.replace('/', '-')}-{workers}.log"
    env = {**os.environ, "BENCH_GITHUB_SECRET": SECRET, "EVENTFLOW_LOG_LEVEL": "warning"}
    if kind in BARE_LOOPS:
        command = [sys.executable, __file__, "--serve-bare", str(port), BARE_LOOPS[kind]]
    else:
        command = [EVENTFLOW, "serve", str(work / "sensor.yaml"), "--port", str(port)]
        command += ["--data-dir", str(data_dir(work, kind, workers))]
        command += ["--intake-workers", str(workers)]
        if kind == "jetstream":
            env |= {
                "EVENTFLOW_BUS__URL": nats,
                "EVENTFLOW_BUS__STREAM": stream,
                "EVENTFLOW_BUS__SUBJECT_PREFIX": f"bench.{stream.lower()}",
            }
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log)
    except BaseException:
        # A server left behind would keep its streams (and its dead-letter subject) alive.
        process.terminate()
        process.wait(timeout=60)
        raise
    return process


def milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process `pid`, and of it with its children still running."""
    ticks = os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    times = []
    for process in [pid, *map(int, children)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            times.append((int(fields[11]) + int(fields[12])) / ticks)
    return times[0], sum(times)


def stored_events(database: Path | None) -> int:
    """How many events the store at `database` holds (0 for none)."""
    if database is None:
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as store:
        count: int = store.execute("SELECT count(*) FROM events").fetchone()[0]
        return count


def run_wrk(
    name: str,
    connections: int,
    port: int,
    script: Path,
    args: argparse.Namespace,
    server: int,
    database: Path | None,
) -> Figures:
    command = ["wrk", "--latency", "-t", str(args.threads), "-c", str(connections)]
    url = f"http://127.0.0.1:{port}"
    warm_up = [*command, "-d", "2s", "-s", str(script), url, "--", uuid.uuid4().hex[:8]]
    subprocess.run(warm_up, capture_output=True, check=True)
    (main_before, before), stored_before = cpu_seconds(server), stored_events(database)
    started = time.monotonic()
    result = subprocess.run(
        [*command, "-d", f"{args.duration}s", "-s", str(script), url, "--", uuid.uuid4().hex[:8]],
        capture_output=True,
        text=True,
        check=True,
    )
    main_after, after = cpu_seconds(server)
    stored = stored_events(database) - stored_before
    elapsed = time.monotonic() - started
    out = result.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1)  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Figures(
        name,
        connections,
        rate,
        milliseconds(p50),
        milliseconds(p99),
        total,
        int(bad.group(1)) if bad else 0,
        (after - before) * 1e6 / total,
        (main_after - main_before) * 1e6 / total,
        None if database is None else stored / elapsed,
    )


async def delete_stream(nats: str, stream: str) -> None:
    client = await nats_client.connect(nats)
    try:
        # The bus makes a dead-letter stream beside its own; both go, so that the next
        # bus on this server can claim the dead-letter subject.
        for name in (stream, f"{stream}_DLQ"):
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(name)
    finally:
        await client.close()


def measure(
    kind: str, workers: int, work: Path, script: Path, args: argparse.Namespace
) -> list[Figures]:
    """One server of `kind`, loaded with each count of connections in turn."""
    port = free_port()
    stream = f"BENCH_{uuid.uuid4().hex[:8].upper()}"
    process = start(kind, workers, work, port, args.nats, stream)
    name = kind if kind in BARE_LOOPS else f"{kind}/{workers}w"
    database = None if kind in BARE_LOOPS else data_dir(work, kind, workers) / "eventflow.db"
    try:
        return [
            run_wrk(name, connections, port, script, args, process.pid, database)
            for connections in args.connections
        ]
    finally:
        process.terminate()
        process.wait(timeout=60)
        if kind == "jetstream":
            asyncio.run(delete_stream(args.nats, stream))


@contextlib.contextmanager
def own_nats(work: Path, args: argparse.Namespace) -> Iterator[None]:
    """Start a nats-server with JetStream for the run unless --nats names one."""
    if args.nats is not None or "jetstream" not in args.only:
        yield
        return
    port = free_port()
    binary = Path(sys.executable).with_name("nats-server")
    command = [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(work / "js")]
    log = (work / "nats.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"nats-server did not start:\n{(work / 'nats.log').read_text()}")
            time.sleep(0.05)
        args.nats = f"nats://127.0.0.1:{port}"
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per target")
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[32, 64],
        help="counts of keep-alive connections, each measured in turn on the same server",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--nats", default=None, help="a running JetStream server (default: start one)"
    )
    parser.add_argument("--only", nargs="*", default=["bare", "memory", "jetstream"])
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[0, 1], help="intake worker counts to measure"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every target this many times, in turn; medians are printed too",
    )
    parser.add_argument("--serve-bare", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as directory:
        work = Path(directory)
        (work / "sensor.yaml").write_text(SENSOR)
        signature = "sha256=" + hmac.new(SECRET.encode(), PUSH, hashlib.sha256).hexdigest()
        script = work / "github.lua"
        body = "[==[" + PUSH.decode() + "]==]"
        script.write_text(WRK_SCRIPT % {"body": body, "signature": signature})
        bares = ["bare", "bare/uvloop"] if any(args.workers) else ["bare"]
        targets = [
            (target, workers)
            for kind in args.only
            for target, counts in (
                [(bare, [0]) for bare in bares] if kind == "bare" else [(kind, args.workers)]
            )
            for workers in counts
        ]
        with own_nats(work, args):
            rounds = [
                [
                    figures
                    for kind, workers in targets
                    for figures in measure(kind, workers, work, script, args)
                ]
                for _ in range(args.rounds)
            ]
    print(
        f"signed GitHub push deliveries ({len(PUSH)} bytes), wrk -t{args.threads}"
        f" -c{'/'.join(map(str, args.connections))} -d{args.duration}s, {os.cpu_count()} CPUs"
    )
    for number, results in enumerate(rounds, start=1):
        if args.rounds > 1:
            print(f"round {number} of {args.rounds}")
        print_round(results)
    if args.rounds > 1:
        print_medians(rounds)
    if len(args.connections) > 1:
        print_peaks(rounds)


def print_round(results: list[Figures]) -> None:
    print(
        f"{'target':<14} {'conns':>5} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'non-2xx':>8} {'CPU us/delivery':>16} {'main':>5} {'stored/s':>9}"
    )
    for figures in results:
        print(
            f"{figures.name:<14} {figures.connections:>5} {figures.rate:>13,.0f}"
            f" {figures.p50_ms:>8.2f} {figures.p99_ms:>8.2f} {figures.not_2xx:>8}"
            f" {figures.cpu_us:>16,.0f} {figures.main_cpu_us:>5,.0f}"
            f" {stored_rate(figures.stored_rate):>9}"
        )
    for figures in results:
        bare = baseline_of(figures, results)
        if bare is not None:
            print(
                f"{figures.name} / {bare.name} at {figures.connections} connections:"
                f" {figures.rate / bare.rate:.0%}"
            )


def baseline_name(name: str) -> str | None:
    """The bare endpoint on the event loop of the process that answered target `name`'s
    webhooks: the main process's (asyncio) without intake workers, the workers' (uvloop)
    with them; None for a bare endpoint."""
    if name in BARE_LOOPS:
        return None
    return "bare" if name.endswith("/0w") else "bare/uvloop"


def baseline_of(figures: Figures, results: list[Figures]) -> Figures | None:
    """The baseline of `figures` in the same round, at the same count of connections."""
    wanted = baseline_name(figures.name)
    return next(
        (
            bare
            for bare in results
            if bare.name == wanted and bare.connections == figures.connections
        ),
        None,
    )


def print_medians(rounds: list[list[Figures]]) -> None:
    """Each target's median over the rounds; its ratio to bare is the median of the ratios
    taken within each round."""
    print(f"medians of {len(rounds)} rounds")
    print(
        f"{'target':<14} {'conns':>5} {'deliveries/s':>13} {'p99 ms':>8} {'CPU us/delivery':>16}"
        f" {'main':>5} {'stored/s':>9} {'/ bare':>7}"
    )
    for position, first in enumerate(rounds[0]):
        runs = [results[position] for results in rounds]
        ratios = [
            results[position].rate / bare.rate
            for results in rounds
            if (bare := baseline_of(results[position], results)) is not None
        ]
        ratio = f"{statistics.median(ratios):.0%}" if ratios else ""
        stored = [run.stored_rate for run in runs if run.stored_rate is not None]
        print(
            f"{first.name:<14} {first.connections:>5}"
            f" {statistics.median(run.rate for run in runs):>13,.0f}"
            f" {statistics.median(run.p99_ms for run in runs):>8.2f}"
            f" {statistics.median(run.cpu_us for run in runs):>16,.0f}"
            f" {statistics.median(run.main_cpu_us for run in runs):>5,.0f}"
            f" {stored_rate(statistics.median(stored) if stored else None):>9} {ratio:>7}"
        )


def print_peaks(rounds: list[list[Figures]]) -> None:
    """Each target's highest median rate over the counts of connections, and its ratio to
    its baseline's highest: what each can take when enough deliveries are in flight to keep
    it busy. A pipeline of processes needs more in flight than one process does."""
    medians: dict[str, list[tuple[float, Figures]]] = {}
    for position, first in enumerate(rounds[0]):
        rate = statistics.median(results[position].rate for results in rounds)
        medians.setdefault(first.name, []).append((rate, first))
    peaks = {name: max(rates, key=lambda pair: pair[0]) for name, rates in medians.items()}
    print("peaks over the counts of connections (median rates)")
    print(f"{'target':<14} {'deliveries/s':>13} {'at conns':>9} {'/ bare peak':>12}")
    for name, (rate, figures) in peaks.items():
        wanted = baseline_name(name)
        ratio = f"{rate / peaks[wanted][0]:.0%}" if wanted in peaks else ""
        print(f"{name:<14} {rate:>13,.0f} {figures.connections:>9} {ratio:>12}")


def stored_rate(rate: float | None) -> str:
    return "" if rate is None else f"{rate:,.0f}"


if __name__ == "__main__":
    main()
