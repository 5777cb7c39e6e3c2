"""The NATS sensor plugin: core NATS subjects and JetStream consumers become CloudEvents.

Registered under the `eventflow.sensors` entry-point group as `nats = sensors.nats:plugin`.
This module only ties the config model to the sensor class; see `normalizing.py` for how a
message becomes an event and `sensor.py` for subscribing and acknowledging.
"""

from __future__ import annotations

from pydantic import BaseModel

from eventflow.sensing.protocol import SensorContext
from sensors.nats.config import NatsConfig
from sensors.nats.sensor import NatsSensor
from sensors.objectstore.reporting import Reporter

__all__ = ["NatsConfig", "NatsPlugin", "NatsSensor", "plugin"]


class NatsPlugin:
    """What eventflow finds under the entry point: the config model and a sensor factory."""

    @property
    def config_model(self) -> type[BaseModel]:
        return NatsConfig

    def create(self, name: str, config: BaseModel, context: SensorContext) -> NatsSensor:
        if not isinstance(config, NatsConfig):
            raise TypeError(
                f"sensor {name}: the nats plugin takes a NatsConfig, got"
                f" {type(config).__name__}; validate spec.nats with plugin.config_model"
            )
        notifications = None
        if config.payloadFormat == "s3":
            notifications = Reporter(name, config.s3, context.state, context.clock)
        return NatsSensor(name, config, notifications=notifications)


plugin = NatsPlugin()
