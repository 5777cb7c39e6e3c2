"""The Kafka sensor plugin: records of Kafka topics become CloudEvents.

Registered under the `eventflow.sensors` entry-point group as `kafka = sensors.kafka:plugin`.
This module only ties the config model to the sensor class; see `normalizing.py` for how a
record becomes an event and `sensor.py` for consuming, committing and reconnecting.
"""

from __future__ import annotations

from pydantic import BaseModel

from eventflow.sensing.protocol import SensorContext
from sensors.kafka.config import KafkaConfig
from sensors.kafka.sensor import KafkaSensor
from sensors.objectstore.reporting import Reporter

__all__ = ["KafkaConfig", "KafkaPlugin", "KafkaSensor", "plugin"]


class KafkaPlugin:
    """What eventflow finds under the entry point: the config model and a sensor factory."""

    @property
    def config_model(self) -> type[BaseModel]:
        return KafkaConfig

    def create(self, name: str, config: BaseModel, context: SensorContext) -> KafkaSensor:
        if not isinstance(config, KafkaConfig):
            raise TypeError(
                f"sensor {name}: the kafka plugin takes a KafkaConfig,"
                f" got {type(config).__name__}; validate spec.kafka with plugin.config_model"
            )
        notifications = None
        if config.valueFormat == "s3":
            notifications = Reporter(name, config.s3, context.state, context.clock)
        return KafkaSensor(name, config, notifications=notifications)


plugin = KafkaPlugin()
