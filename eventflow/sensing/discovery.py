"""Find the sensor plugins installed in this environment: the `eventflow.sensors` entry points.

eventflow knows no sensor kind by name: a package (built in or third party) declares
`<kind> = "package.module:plugin"` under the group, and the kind becomes usable as
`spec.<kind>` in Sensor documents. A plugin that fails to import or does not look like a
`SensorPlugin` is logged and skipped, so one broken package never stops the service; a Sensor
document that asks for it is then reported by the resource loader as an unknown kind.
This module does not validate sensor configs or create sensors.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

import structlog
from pydantic import BaseModel

from eventflow.sensing.protocol import SensorPlugin

SENSOR_GROUP = "eventflow.sensors"

log = structlog.get_logger()


def _problem(loaded: Any) -> str | None:
    """Why `loaded` is not a SensorPlugin, or None when it is one."""
    config_model = getattr(loaded, "config_model", None)
    if not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
        return (
            f"config_model is {config_model!r}; a plugin's config_model is a pydantic model class"
        )
    if not callable(getattr(loaded, "create", None)):
        return "it has no create(name, config) method"
    return None


def _load(entry_point: EntryPoint) -> SensorPlugin | None:
    try:
        loaded = entry_point.load()
    except Exception as error:  # an import can fail any way the plugin's code can
        log.warning(
            "sensor plugin skipped",
            name=entry_point.name,
            error=f"loading {entry_point.value} failed: {type(error).__name__}: {error}",
        )
        return None
    problem = _problem(loaded)
    if problem is not None:
        log.warning(
            "sensor plugin skipped", name=entry_point.name, error=f"{entry_point.value}: {problem}"
        )
        return None
    return cast(SensorPlugin, loaded)


def discover_plugins(group: str = SENSOR_GROUP) -> dict[str, SensorPlugin]:
    """Sensor kind -> plugin, for every entry point of `group` that loads and fits."""
    plugins: dict[str, SensorPlugin] = {}
    for entry_point in entry_points(group=group):
        if entry_point.name in plugins:
            log.warning(
                "sensor plugin skipped",
                name=entry_point.name,
                error=f"{entry_point.value}: another package already registered this kind",
            )
            continue
        plugin = _load(entry_point)
        if plugin is not None:
            plugins[entry_point.name] = plugin
    return plugins
