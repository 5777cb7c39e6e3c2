"""Benchmark of the trigger matcher: events matched per second at 1, 100 and 10,000 triggers.

Triggers come in mixed shapes (exact types, type prefixes, data equality, CEL filters over a
few fields, source prefixes with subjects, a few with only a sensor). The world they describe
grows with their number (N/50 vendors, N repositories), as it does when more teams write
rules, so the share of events that match stays about the same at every size and the figures
show what the index costs, not a growing number of runs to start.

    python bench/match.py [--events 50000] [--sizes 1,100,10000] [--seed 7] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime
from typing import Any

from eventflow.engine.matching import TriggerIndex
from eventflow.events import Event, ReceivedEvent
from eventflow.resources.models import Trigger

SENSORS = ["github", "gitlab", "s3", "kafka", "schedule"]
ENTITIES = 10
ACTIONS = ["opened", "closed", "edited", "pushed", "deleted"]
NOW = datetime(2024, 5, 1, tzinfo=UTC)


class World:
    """The names triggers and events are drawn from, sized for `triggers` rules."""

    def __init__(self, triggers: int, rng: random.Random) -> None:
        self.vendors = max(2, triggers // 50)
        self.repos = max(10, triggers)
        self.rng = rng

    def vendor(self) -> int:
        return self.rng.randrange(self.vendors)

    def type(self, vendor: int) -> str:
        entity = self.rng.randrange(ENTITIES)
        return f"com.v{vendor}.e{entity}.{self.rng.choice(ACTIONS)}"

    def repo(self) -> str:
        return f"org{self.rng.randrange(self.repos)}/repo"

    def ref(self) -> str:
        return self.rng.choice(["refs/heads/main", "refs/heads/dev", "refs/tags/v1"])


def selector(world: World, number: int) -> dict[str, Any]:
    rng, vendor = world.rng, world.vendor()
    sensor = rng.choice(SENSORS)
    shape = number % 10
    if shape in (0, 1):
        return {
            "type": world.type(vendor),
            "filter": f'data.size > {rng.randrange(1000)} && data.ref.startsWith("refs/heads/")',
        }
    if shape in (2, 3):
        return {"sensor": sensor, "type": world.type(vendor)}
    if shape == 4:
        return {"type": world.type(vendor).rsplit(".", 1)[0] + ".*"}
    if shape in (5, 6):
        return {"type": world.type(vendor), "data": {"repo": world.repo()}}
    if shape == 7:
        return {
            "type": world.type(vendor).rsplit(".", 1)[0] + ".*",
            "data": {"action": rng.sample(ACTIONS, 2)},
            "filter": f"data.size > {rng.randrange(1000)}",
        }
    if shape == 8:
        return {
            "source": f"https://v{vendor}.example/*",
            "subject": world.ref(),
            "data": {"repo": world.repo()},
        }
    if number % 2000 == 9:
        return {"sensor": sensor}
    return {"type": world.type(vendor), "data": {"ref": world.ref()}, "filter": 'sensor != "s3"'}


def triggers(world: World, count: int) -> list[Trigger]:
    return [
        Trigger.model_validate(
            {
                "apiVersion": "eventflow.io/v1alpha1",
                "kind": "Trigger",
                "metadata": {"name": f"t{number:05d}"},
                "spec": {"events": {"e": selector(world, number)}, "workflow": "w"},
            }
        )
        for number in range(count)
    ]


def events(world: World, count: int) -> list[ReceivedEvent]:
    stream = []
    for number in range(count):
        vendor = world.vendor()
        action = world.rng.choice(ACTIONS)
        event = Event(
            id=str(number),
            source=f"https://v{vendor}.example/org",
            type=world.type(vendor),
            subject=world.ref() if number % 2 else None,
            data={
                "repo": world.repo(),
                "ref": world.ref(),
                "action": action,
                "size": world.rng.randrange(1000),
                "sender": {"login": f"user{number % 97}", "id": number},
            },
        )
        stream.append(ReceivedEvent(event, world.rng.choice(SENSORS), NOW))
    return stream


def best_pass(index: TriggerIndex, stream: list[ReceivedEvent], repeat: int) -> float:
    """Seconds of the fastest pass over the stream: other processes only ever slow one down."""
    match = index.match
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for received in stream:
            match(received)
        best = min(best, time.perf_counter() - started)
    return best


def measure(size: int, count: int, seed: int, repeat: int) -> float:
    world = World(size, random.Random(seed))
    rules = triggers(world, size)
    started = time.perf_counter()
    index = TriggerIndex.build(rules)
    built = time.perf_counter() - started
    stream = events(world, count)
    elapsed = best_pass(index, stream, repeat)
    verdicts = [verdict for received in stream for verdict in index.match(received)]
    matched = sum(verdict.matched for verdict in verdicts)
    rate = count / elapsed
    print(
        f"{size:>6} triggers: {rate:>9,.0f} events/s  ({elapsed * 1e6 / count:5.1f} us/event,"
        f" build {built * 1000:6.1f} ms, {matched / count:.2f} matches"
        f" and {(len(verdicts) - matched) / count:.2f} filter refusals per event)"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per size")
    parser.add_argument("--sizes", default="1,100,10000", help="comma-separated trigger counts")
    parser.add_argument("--seed", type=int, default=7, help="random seed, for repeatable runs")
    parser.add_argument("--repeat", type=int, default=3, help="passes per size; the best counts")
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    rates = {
        size: measure(size, arguments.events, arguments.seed, arguments.repeat) for size in sizes
    }
    if 100 in rates and 10_000 in rates:
        print(f"10,000 / 100 slowdown: {rates[100] / rates[10_000]:.2f}x")


if __name__ == "__main__":
    main()
