"""The object-store sensor plugin: S3 and S3-compatible stores (MinIO, Ceph RGW) report object
changes, by polling (`polling.py`), by an SQS queue (`receiving.py`) or by push to a webhook
path (`pushing.py`); each change becomes one CloudEvent (`normalizing.py`), filtered and
deduplicated against the sensor's state (`filtering.py`, `reporting.py`).

Registered under the `eventflow.sensors` entry-point group as
`objectstore = sensors.objectstore:plugin`. This module only ties the config model to the
sensor classes.
"""

from __future__ import annotations

from pydantic import BaseModel

from eventflow.sensing.protocol import SensorContext
from sensors.objectstore.config import ObjectStoreConfig
from sensors.objectstore.pushing import ObjectStorePushSensor
from sensors.objectstore.reporting import Reporter
from sensors.objectstore.sensor import ObjectStoreSensor

__all__ = [
    "ObjectStoreConfig",
    "ObjectStorePlugin",
    "ObjectStorePushSensor",
    "ObjectStoreSensor",
    "plugin",
]


class ObjectStorePlugin:
    """What eventflow finds under the entry point: the config model and a sensor factory."""

    @property
    def config_model(self) -> type[BaseModel]:
        return ObjectStoreConfig

    def create(
        self, name: str, config: BaseModel, context: SensorContext
    ) -> ObjectStoreSensor | ObjectStorePushSensor:
        if not isinstance(config, ObjectStoreConfig):
            raise TypeError(
                f"sensor {name}: the objectstore plugin takes an ObjectStoreConfig, got"
                f" {type(config).__name__}; validate spec.objectstore with plugin.config_model"
            )
        if config.push is not None:
            return ObjectStorePushSensor(
                Reporter(name, config, context.state, context.clock), config.push
            )
        return ObjectStoreSensor(name, config, context)


plugin = ObjectStorePlugin()
