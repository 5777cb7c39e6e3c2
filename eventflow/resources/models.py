"""The user's language: Sensor, Trigger and WorkflowTemplate documents (eventflow.io/v1alpha1).

Strict pydantic models: an unknown field is an error, so a typo never passes silently. The
models check the shape of one document; `validation.py` checks what spans documents (names
that refer to each other, DAG cycles) and compiles the expressions.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from eventflow.resources.kubernetes import KubernetesOptions, layers

API_VERSION = "eventflow.io/v1alpha1"

# DNS-1123 label: what Kubernetes accepts as a name, so resources can become CRDs later.
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """'1h30m', '10s', '250ms' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 10s, 5m, 1h30m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = value.strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(
            f"{value!r} is not a duration; write a number with a unit: 250ms, 10s, 5m, 1h30m, 1d"
        )
    return total


class Strict(BaseModel):
    """Base of every resource model: unknown fields are errors, names are camelCase."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Metadata(Strict):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


# --- Sensor -----------------------------------------------------------------------------


class SensorSpec(Strict):
    """Exactly one sensor kind, named by its key; the plugin of that kind validates the rest.

    `spec: {webhook: {path: github}}` selects the `webhook` plugin registered under the
    `eventflow.sensors` entry-point group.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    @property
    def kind(self) -> str:
        return next(iter(self.model_extra or {}))

    @property
    def config(self) -> dict[str, Any]:
        value = (self.model_extra or {})[self.kind]
        return dict(value) if isinstance(value, dict) else {}


class Sensor(Strict):
    apiVersion: Literal["eventflow.io/v1alpha1"]
    kind: Literal["Sensor"]
    metadata: Metadata
    spec: SensorSpec


# --- Trigger ----------------------------------------------------------------------------

Scalar = str | int | float | bool


class EventSelector(Strict):
    """Which events a trigger listens to. Every condition given must hold.

    `type`, `source` and `subject` are exact, or prefixes when they end with `*`.
    `data` maps dotted paths into the event data to a value, or to a list of accepted values.
    These are indexed: an event is checked only against triggers they admit. `filter` is a
    CEL expression evaluated on what remains.
    """

    sensor: Name | None = None
    type: str | None = None
    source: str | None = None
    subject: str | None = None
    data: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    filter: str | None = None


class Concurrency(Strict):
    limit: int = Field(ge=1, description="runs of this trigger active at once; more wait")


class Policy(Strict):
    dedupe: str | None = Field(
        default=None,
        description="template of the dedupe key; a second event with the same key starts"
        " no run (default: the event id)",
    )
    concurrency: Concurrency | None = None


class TriggerSpec(Strict):
    events: dict[Name, EventSelector] = Field(min_length=1, max_length=1)
    workflow: Name
    arguments: dict[str, str] = Field(default_factory=dict)
    policy: Policy = Field(default_factory=Policy)


class Trigger(Strict):
    apiVersion: Literal["eventflow.io/v1alpha1"]
    kind: Literal["Trigger"]
    metadata: Metadata
    spec: TriggerSpec


# --- WorkflowTemplate -------------------------------------------------------------------

Duration = Annotated[float, Field(ge=0)]


class Parameter(Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    default: str | None = None
    description: str | None = None


class Retries(Strict):
    limit: int = Field(default=0, ge=0, le=100, description="attempts after the first")
    backoff: Duration = Field(default=10.0, description="seconds before the first retry")
    factor: float = Field(default=2.0, ge=1.0, description="backoff multiplier per retry")
    maxBackoff: Duration = Field(default=600.0)

    @field_validator("backoff", "maxBackoff", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class Step(Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")]
    image: str | None = None
    command: list[str] = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workingDir: str | None = None
    depends: list[str] = Field(default_factory=list)
    when: str | None = Field(default=None, description="CEL; false skips the step")
    retries: Retries = Field(default_factory=Retries)
    timeout: Duration | None = None
    kubernetes: KubernetesOptions = Field(
        default_factory=KubernetesOptions,
        description="how the step's Job looks on the Kubernetes executor, over the workflow's"
        " block; the local executor ignores it",
    )

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)


class WorkflowSpec(Strict):
    parameters: list[Parameter] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="env for every step")
    parallelism: int | None = Field(default=None, ge=1, description="steps running at once")
    failFast: bool = Field(
        default=True,
        description="on a failed step, cancel the running ones and start no more;"
        " false runs every step whose dependencies succeeded",
    )
    steps: list[Step] = Field(min_length=1)
    kubernetes: KubernetesOptions = Field(
        default_factory=KubernetesOptions,
        description="how every step's Job looks on the Kubernetes executor, over the"
        " installation's defaults; the local executor ignores it",
    )

    def kubernetes_layers(self, step: Step) -> tuple[dict[str, Any], ...]:
        """The `kubernetes:` blocks of `step`, the workflow's then its own, as layers."""
        return layers(self.kubernetes, step.kubernetes)


class WorkflowTemplate(Strict):
    apiVersion: Literal["eventflow.io/v1alpha1"]
    kind: Literal["WorkflowTemplate"]
    metadata: Metadata
    spec: WorkflowSpec


Resource = Sensor | Trigger | WorkflowTemplate
KINDS: dict[str, type[Sensor] | type[Trigger] | type[WorkflowTemplate]] = {
    "Sensor": Sensor,
    "Trigger": Trigger,
    "WorkflowTemplate": WorkflowTemplate,
}
