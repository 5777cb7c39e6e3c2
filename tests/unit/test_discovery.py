"""Sensor plugin discovery through real entry points declared by a dist-info on sys.path."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from eventflow.sensing.discovery import SENSOR_GROUP, discover_plugins
from eventflow.sensing.state import memory_context
from sensors.webhook import WebhookSensor
from sensors.webhook import plugin as webhook_plugin
from sensors.webhook.config import WebhookConfig

GROUP = "eventflow.sensors.discoverytest"
GOOD_PLUGIN = """
from pydantic import BaseModel

class Config(BaseModel):
    url: str

class Plugin:
    config_model = Config

    def create(self, name, config, context):
        return (name, config)

plugin = Plugin()
"""
MODULES = {
    "discovery_good": GOOD_PLUGIN,
    "discovery_twin": GOOD_PLUGIN,
    "discovery_broken": 'raise ImportError("libfoo.so: cannot open shared object file")\n',
    "discovery_shapeless": "plugin = object()\n",
    "discovery_nocreate": "from pydantic import BaseModel\n"
    "class P:\n    config_model = BaseModel\nplugin = P()\n",
}


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test plugin modules on sys.path, forgotten by the import system afterwards."""
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def declare(
    site: Path, distribution: str, entry_points: dict[str, str], group: str = GROUP
) -> None:
    """Write a minimal installed distribution whose entry_points.txt declares `entry_points`."""
    info = site / f"{distribution}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")


def test_good_plugin_is_found_and_broken_one_is_logged_and_skipped(installed: Path) -> None:
    """An entry point raising ImportError is skipped with a log; the good one is returned."""
    declare(
        installed,
        "discovery_dist",
        {"good": "discovery_good:plugin", "broken": "discovery_broken:plugin"},
    )
    with capture_logs() as logs:
        plugins = discover_plugins(GROUP)
    assert sorted(plugins) == ["good"]
    config = plugins["good"].config_model(url="u")
    created: object = plugins["good"].create("a", config, memory_context())
    assert created == ("a", config)
    assert logs == [
        {
            "event": "sensor plugin skipped",
            "log_level": "warning",
            "name": "broken",
            "error": "loading discovery_broken:plugin failed: ImportError:"
            " libfoo.so: cannot open shared object file",
        }
    ]


def test_plugin_without_config_model_or_create_is_skipped(installed: Path) -> None:
    """Objects that do not look like a SensorPlugin are skipped, each with its reason."""
    declare(
        installed,
        "discovery_dist",
        {"shapeless": "discovery_shapeless:plugin", "nocreate": "discovery_nocreate:plugin"},
    )
    with capture_logs() as logs:
        plugins = discover_plugins(GROUP)
    assert plugins == {}
    assert sorted((log["name"], log["error"]) for log in logs) == [
        ("nocreate", "discovery_nocreate:plugin: it has no create(name, config) method"),
        (
            "shapeless",
            "discovery_shapeless:plugin: config_model is None;"
            " a plugin's config_model is a pydantic model class",
        ),
    ]


def test_missing_module_or_attribute_is_skipped(installed: Path) -> None:
    """A target that names a missing module or attribute is skipped, not fatal."""
    declare(
        installed,
        "discovery_dist",
        {"gone": "discovery_nowhere:plugin", "typo": "discovery_good:plugn"},
    )
    with capture_logs() as logs:
        plugins = discover_plugins(GROUP)
    assert plugins == {}
    assert sorted((log["name"], log["error"]) for log in logs) == [
        (
            "gone",
            "loading discovery_nowhere:plugin failed: ModuleNotFoundError:"
            " No module named 'discovery_nowhere'",
        ),
        (
            "typo",
            "loading discovery_good:plugn failed: AttributeError:"
            " module 'discovery_good' has no attribute 'plugn'",
        ),
    ]


def test_second_package_claiming_a_kind_is_skipped(installed: Path) -> None:
    """When two distributions register the same kind, the first found is kept."""
    declare(installed, "discovery_a", {"good": "discovery_good:plugin"})
    declare(installed, "discovery_b", {"good": "discovery_twin:plugin"})
    with capture_logs() as logs:
        plugins = discover_plugins(GROUP)
    kept = "discovery_good" if "discovery_good" in sys.modules else "discovery_twin"
    skipped = {"discovery_good": "discovery_twin", "discovery_twin": "discovery_good"}[kept]
    assert list(plugins) == ["good"]
    assert plugins["good"] is sys.modules[kept].plugin
    assert skipped not in sys.modules
    assert logs == [
        {
            "event": "sensor plugin skipped",
            "log_level": "warning",
            "name": "good",
            "error": f"{skipped}:plugin: another package already registered this kind",
        }
    ]


def test_empty_group_gives_no_plugins(installed: Path) -> None:
    """A group nobody registered in is an empty mapping, without logs."""
    with capture_logs() as logs:
        assert discover_plugins(GROUP) == {}
    assert logs == []


def test_builtin_webhook_plugin_loads_through_its_entry_point(installed: Path) -> None:
    """The entry point pyproject.toml declares resolves to the webhook plugin."""
    declare(installed, "discovery_eventflow", {"webhook": "sensors.webhook:plugin"}, SENSOR_GROUP)
    plugins = discover_plugins()
    assert plugins["webhook"] is webhook_plugin
    sensor = plugins["webhook"].create(
        "gh", WebhookConfig.model_validate({"path": "github"}), memory_context()
    )
    assert isinstance(sensor, WebhookSensor)
    assert (sensor.name, sensor.path, sensor.max_body_bytes) == ("gh", "github", 1_048_576)


def test_webhook_plugin_refuses_another_config_model() -> None:
    """create() with a config of the wrong model says which model it takes."""
    with pytest.raises(TypeError) as caught:
        webhook_plugin.create(
            "gh", WebhookConfig.model_validate({"path": "a"}).event, memory_context()
        )
    assert str(caught.value) == (
        "sensor gh: the webhook plugin takes a WebhookConfig, got EventTemplates;"
        " validate spec.webhook with plugin.config_model"
    )
