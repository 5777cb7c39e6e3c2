"""What a configuration change starts, stops and keeps, and which paths clash (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from eventflow.api.registration import conflict
from eventflow.reloading import SensorChanges, SensorEntry, path_problems, plan_changes
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest


class Config(BaseModel):
    path: str = ""


def entry(name: str, spec: Any, origin: str = "yaml", kind: str = "webhook") -> SensorEntry:
    line = sum(map(ord, name)) % 50 + 1
    file = "f.yaml" if origin == "yaml" else "api"
    return SensorEntry(name, kind, spec, Config(), origin, file, line)  # type: ignore[arg-type]


@dataclass
class Hook:
    name: str
    path: str
    max_body_bytes: int = 10

    async def run(self, emit: Emit) -> None:
        raise AssertionError("not run in these tests")

    async def handle(self, request: HttpRequest, emit: Emit) -> HttpReply:
        raise AssertionError("not called in these tests")


@dataclass
class Stream:
    name: str

    async def run(self, emit: Emit) -> None:
        raise AssertionError("not run in these tests")


def test_unchanged_sensors_are_kept_and_changed_ones_restarted() -> None:
    """Same kind and spec: kept; other spec or kind: stopped and started; new: started."""
    old = {
        "same": entry("same", {"path": "a"}),
        "respec": entry("respec", {"path": "b"}),
        "rekind": entry("rekind", {"subject": "x"}, kind="nats"),
        "gone": entry("gone", {"path": "c"}),
    }
    new = {
        "same": entry("same", {"path": "a"}),
        "respec": entry("respec", {"path": "b2"}),
        "rekind": entry("rekind", {"subject": "x"}, kind="kafka"),
        "fresh": entry("fresh", {"path": "d"}),
    }
    assert plan_changes(old, new) == SensorChanges(
        started=("fresh", "rekind", "respec"),
        stopped=("gone", "rekind", "respec"),
        kept=("same",),
    )


def test_from_nothing_everything_starts() -> None:
    """The first load starts every sensor."""
    new = {"a": entry("a", {}), "b": entry("b", {})}
    assert plan_changes({}, new) == SensorChanges(("a", "b"), (), ())


def test_a_path_served_twice_is_told_on_the_yaml_sensor() -> None:
    """Of a registered webhook and a YAML sensor on one path, the YAML one gets the problem;
    stream sensors have no path and never clash."""
    entries = {
        "api-hook": entry("api-hook", {}, origin="api"),
        "yaml-hook": entry("yaml-hook", {}),
        "stream": entry("stream", {}, kind="nats"),
    }
    sensors: dict[str, Any] = {
        "api-hook": Hook("api-hook", "p"),
        "yaml-hook": Hook("yaml-hook", "p"),
        "stream": Stream("stream"),
    }
    paths, problems = path_problems(entries, sensors)
    assert paths == {"p": sensors["api-hook"]}
    assert [str(problem) for problem in problems] == [
        f"f.yaml:{entries['yaml-hook'].line}: Sensor/yaml-hook: spec.webhook.path: path 'p' is"
        " already served by sensor 'api-hook' (defined in the REST API); give each sensor its"
        " own path"
    ]


def test_registration_conflicts_name_the_reason() -> None:
    """YAML names are read-only, names and paths are unique, a replace may keep its path."""
    entries = {"y": entry("y", {}), "r": entry("r", {}, origin="api")}
    sensors: dict[str, Any] = {"y": Hook("y", "yp"), "r": Hook("r", "rp")}
    assert conflict(entries, sensors, "y", "new", replacing=True) == (
        "sensor 'y' is defined in f.yaml: edit the file and reload"
    )
    assert conflict(entries, sensors, "r", "new", replacing=False) == (
        "a webhook named 'r' is already registered; change it with PUT /api/v1/webhooks/r or"
        " pick another name"
    )
    assert conflict(entries, sensors, "n", "yp", replacing=False) == (
        f"path 'yp' is already served by sensor 'y' (defined in f.yaml:{entries['y'].line});"
        " pick another path"
    )
    assert conflict(entries, sensors, "r", "rp", replacing=True) is None
    assert conflict(entries, sensors, "n", "np", replacing=False) is None
