"""The webhook sensor plugin: HTTP requests to /webhooks/<path> become CloudEvents.

Registered under the `eventflow.sensors` entry-point group as `webhook = sensors.webhook:plugin`.
This module only ties the config model to the sensor class; see `normalizing.py` for what
requests are accepted and `sensor.py` for how they are answered.
"""

from __future__ import annotations

from pydantic import BaseModel

from eventflow.sensing.protocol import SensorContext
from sensors.webhook.config import WebhookConfig
from sensors.webhook.sensor import WebhookSensor

__all__ = ["WebhookConfig", "WebhookPlugin", "WebhookSensor", "plugin"]


class WebhookPlugin:
    """What eventflow finds under the entry point: the config model and a sensor factory."""

    @property
    def config_model(self) -> type[BaseModel]:
        return WebhookConfig

    def create(self, name: str, config: BaseModel, context: SensorContext) -> WebhookSensor:
        if not isinstance(config, WebhookConfig):
            raise TypeError(
                f"sensor {name}: the webhook plugin takes a WebhookConfig,"
                f" got {type(config).__name__}; validate spec.webhook with plugin.config_model"
            )
        return WebhookSensor(
            name, config, clock=context.clock, state=context.state, rate_limits=context.rate_limits
        )


plugin = WebhookPlugin()
