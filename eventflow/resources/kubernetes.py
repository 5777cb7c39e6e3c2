"""The `kubernetes:` block: how a step's Job and Pod are shaped on the Kubernetes executor.

A WorkflowTemplate's spec and each of its steps may carry the block, and the installation's
settings hold defaults for it (`executor.kubernetes.defaults`). `merge_options` layers them:
installation, then workflow, then step; a later layer wins, maps merge key by key, lists
and scalars are replaced, and a field left out (or null) is inherited. `podTemplate`
patches are not merged with each other: they are kept in order, to be applied one after
another to the Pod template (so a `$patch: delete` in the step's patch still reaches the
template, not only the installation's patch).

The models are strict: a misspelt field, a quantity such as "500x" or an env reference that
names neither a Secret nor a ConfigMap is an error at load time, with its field path. Field
names are Kubernetes' own where the block mirrors a Pod field; `envRefs` is eventflow's short
form of `valueFrom`. The local executor ignores the block.

It does no I/O, and it does not build Jobs (executors/manifests.py does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

# The Kubernetes quantity grammar (apimachinery resource.Quantity): a number, then a binary
# or decimal SI suffix or a decimal exponent. "500m" CPU, "1Gi" memory, "1e3", "1.5".
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|m|k|M|G|T|P|E)?"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# A qualified name ([prefix/]name), as label, annotation and resource names are.
_QUALIFIED = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_VOLUME_SOURCES = frozenset(
    {
        *("awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap"),
        *("csi", "downwardAPI", "emptyDir", "ephemeral", "fc", "flexVolume", "flocker"),
        *("gcePersistentDisk", "gitRepo", "glusterfs", "hostPath", "image", "iscsi", "nfs"),
        *("persistentVolumeClaim", "photonPersistentDisk", "portworxVolume", "projected"),
        *("quobyte", "rbd", "scaleIO", "secret", "storageos", "vsphereVolume"),
    }
)
_POD_TEMPLATE_FIELDS = ("metadata", "spec")


def parse_quantity(value: str) -> Decimal:
    """'500m' -> 0.5, '1Gi' -> 1073741824, '1e3' -> 1000; ValueError when it is no quantity."""
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity; write a number with an optional"
            " suffix, such as 500m or 2 (CPU) and 512Mi or 1Gi (memory)"
        )
    number, suffix = Decimal(match["number"]), match["suffix"] or ""
    scaled: Decimal
    try:
        if suffix in _BINARY:
            scaled = number * 1024 ** _BINARY[suffix]
        else:
            scaled = number.scaleb(_DECIMAL.get(suffix) or (int(suffix[1:]) if suffix else 0))
    except InvalidOperation as error:
        raise ValueError(f"{value!r} is out of range for a Kubernetes quantity") from error
    return scaled


def _quantity(value: Any) -> Any:
    """YAML reads `cpu: 1` and `cpu: 0.5` as numbers; Kubernetes takes them as quantities."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and parse_quantity(value) < 0:
        raise ValueError(f"{value!r} is negative; a resource quantity is 0 or more")
    return value


def _check(pattern: re.Pattern[str], what: str, accepted: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}; write {accepted}")
        return value

    return BeforeValidator(check)


Quantity = Annotated[str, BeforeValidator(_quantity)]
DnsLabel = Annotated[
    str,
    Field(max_length=63),
    _check(_DNS_LABEL, "a DNS label", "lowercase letters, digits and '-', such as data"),
]
ObjectName = Annotated[
    str,
    Field(max_length=253),
    _check(_DNS_SUBDOMAIN, "an object name", "lowercase letters, digits, '-' and '.'"),
]
EnvName = Annotated[
    str,
    _check(
        re.compile(r"[A-Za-z_][A-Za-z0-9_]*"),
        "a variable name",
        "letters, digits and '_', not starting with a digit, such as DATABASE_URL",
    ),
]


def _qualified_keys(value: Any, what: str) -> Any:
    for key in value if isinstance(value, dict) else ():
        if not isinstance(key, str) or not _QUALIFIED.fullmatch(key) or len(key) > 316:
            raise ValueError(
                f"{key!r} is not a {what} name; write an optional DNS prefix and '/', then"
                " letters, digits, '-', '_' and '.', such as example.com/team"
            )
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Resources(Strict):
    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return _qualified_keys(value, "resource")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for name, request in (self.requests or {}).items():
            limit = (self.limits or {}).get(name)
            if limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(
                    f"requests.{name} {request!r} is more than limits.{name} {limit!r};"
                    " Kubernetes refuses such a Pod: lower the request or raise the limit"
                )
        return self


class Toleration(Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(
                f"operator Exists matches any value, so value {self.value!r} is not accepted;"
                " remove the value, or use operator Equal"
            )
        return self


class Affinity(Strict):
    """Kubernetes' Affinity; the terms inside are passed on as written."""

    nodeAffinity: dict[str, Any] | None = None
    podAffinity: dict[str, Any] | None = None
    podAntiAffinity: dict[str, Any] | None = None


class Volume(BaseModel):
    """A Pod volume: its name and exactly one source (emptyDir, secret, configMap, ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: DnsLabel

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = list(self.model_extra or {})
        if len(sources) != 1 or sources[0] not in _VOLUME_SOURCES:
            raise ValueError(
                f"volume {self.name!r} has {', '.join(sources) or 'no source'}; give exactly"
                " one source, such as emptyDir: {}, secret: {secretName: x},"
                " configMap: {name: x} or persistentVolumeClaim: {claimName: x}"
            )
        if not isinstance(self.model_extra[sources[0]], dict):  # type: ignore[index]
            raise ValueError(f"volume {self.name!r}: {sources[0]} is a mapping, such as {{}}")
        return self


class VolumeMount(Strict):
    name: DnsLabel
    mountPath: Annotated[
        str, _check(re.compile(r"/.*"), "an absolute path", "a path starting with /")
    ]
    readOnly: bool | None = None
    subPath: str | None = None
    subPathExpr: str | None = None
    mountPropagation: Literal["None", "HostToContainer", "Bidirectional"] | None = None
    recursiveReadOnly: Literal["Disabled", "IfPossible", "Enabled"] | None = None


class Profile(Strict):
    """A seccomp or AppArmor profile."""

    type: Literal["RuntimeDefault", "Unconfined", "Localhost"]
    localhostProfile: str | None = None


class Capabilities(Strict):
    add: list[str] | None = None
    drop: list[str] | None = None


class Sysctl(Strict):
    name: str
    value: str


UserId = Annotated[int, Field(ge=0)]


class _SecurityContext(Strict):
    runAsUser: UserId | None = None
    runAsGroup: UserId | None = None
    runAsNonRoot: bool | None = None
    seLinuxOptions: dict[str, str] | None = None
    seccompProfile: Profile | None = None
    appArmorProfile: Profile | None = None
    windowsOptions: dict[str, Any] | None = None


class PodSecurityContext(_SecurityContext):
    fsGroup: UserId | None = None
    fsGroupChangePolicy: Literal["OnRootMismatch", "Always"] | None = None
    supplementalGroups: list[UserId] | None = None
    supplementalGroupsPolicy: Literal["Merge", "Strict"] | None = None
    sysctls: list[Sysctl] | None = None


class ContainerSecurityContext(_SecurityContext):
    allowPrivilegeEscalation: bool | None = None
    capabilities: Capabilities | None = None
    privileged: bool | None = None
    procMount: Literal["Default", "Unmasked"] | None = None
    readOnlyRootFilesystem: bool | None = None


def _one_of(model: BaseModel, first: str, second: str, example: str) -> None:
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"give exactly one of {first} and {second}, such as {example}")


class SourceRef(Strict):
    name: ObjectName
    optional: bool | None = None


class EnvFromSource(Strict):
    """Every key of one Secret or ConfigMap as a variable, optionally prefixed."""

    prefix: str | None = None
    secretRef: SourceRef | None = None
    configMapRef: SourceRef | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EnvFromSource:
        _one_of(self, "secretRef", "configMapRef", "{secretRef: {name: db}}")
        return self


class EnvRef(Strict):
    """One variable from one key of a Secret or a ConfigMap: {secret: db, key: password}."""

    secret: ObjectName | None = None
    configMap: ObjectName | None = None
    key: Annotated[str, Field(min_length=1)]
    optional: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EnvRef:
        example = "{secret: db, key: password} or {configMap: settings, key: level}"
        _one_of(self, "secret", "configMap", example)
        return self


class KubernetesOptions(Strict):
    """The `kubernetes:` block. Only the Kubernetes executor reads it; the local one ignores it."""

    serviceAccountName: ObjectName | None = Field(
        default=None, description="service account of the step's Pod"
    )
    resources: Resources | None = Field(
        default=None, description="requests and limits of the step's container: cpu: 500m"
    )
    nodeSelector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    affinity: Affinity | None = None
    volumes: list[Volume] | None = None
    volumeMounts: list[VolumeMount] | None = Field(
        default=None, description="mounts of `volumes` in the step's container"
    )
    imagePullSecrets: list[ObjectName] | None = Field(
        default=None, description="names of the Secrets used to pull the image"
    )
    securityContext: PodSecurityContext | None = Field(
        default=None, description="the Pod's security context"
    )
    containerSecurityContext: ContainerSecurityContext | None = Field(
        default=None, description="the step container's security context"
    )
    envFrom: list[EnvFromSource] | None = None
    envRefs: dict[EnvName, EnvRef] | None = Field(
        default=None,
        description="variables read from Secret or ConfigMap keys:"
        " {DB_PASSWORD: {secret: db, key: password}}",
    )
    ttlSecondsAfterFinished: int | None = Field(
        default=None, ge=0, description="seconds a finished Job is kept after its result"
    )
    labels: dict[str, str] | None = Field(default=None, description="labels of the Job and Pod")
    annotations: dict[str, str] | None = Field(
        default=None, description="annotations of the Job and Pod"
    )
    podTemplate: dict[str, Any] | None = Field(
        default=None,
        description="strategic-merge patch of the Pod template, applied last: maps merge,"
        " containers/volumes/env merge by name, other lists are replaced",
    )

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        return _qualified_keys(value, "label or annotation")

    @field_validator("labels")
    @classmethod
    def _label_values(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            if len(text) > 63 or not _LABEL_VALUE.fullmatch(text):
                raise ValueError(
                    f"{key}: {text!r} is not a label value; write at most 63 letters, digits,"
                    " '-', '_' and '.', starting and ending with a letter or digit"
                )
        return value

    @field_validator("podTemplate")
    @classmethod
    def _template_fields(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, part in (value or {}).items():
            if key not in _POD_TEMPLATE_FIELDS or not isinstance(part, dict):
                raise ValueError(
                    f"{key}: a Pod template patch holds metadata and spec mappings only,"
                    " such as {spec: {priorityClassName: batch}}"
                )
        return value


def layers(*blocks: KubernetesOptions | None) -> tuple[dict[str, Any], ...]:
    """The blocks given, as layers for `merge_options`: what they set, as in YAML; blocks
    that are missing or set nothing give no layer.

    A null field sets nothing (so a run's spec, stored with every field and read back,
    gives the same layers); to clear an earlier layer's list, write an empty one.
    """
    dumped = (block.model_dump(mode="json", exclude_none=True) for block in blocks if block)
    return tuple(layer for layer in dumped if layer)


def merge_options(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Layers of `kubernetes:` blocks (installation, workflow, step) -> one, the later winning.

    Maps merge key by key, recursively; lists and scalars are replaced. The result's
    `podTemplate` is the list of the layers' patches, in order, each to be applied in turn.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        patch = layer.get("podTemplate")
        merged = _merge(
            merged, {key: value for key, value in layer.items() if key != "podTemplate"}
        )
        if patch is not None:
            merged["podTemplate"] = [*merged.get("podTemplate", ()), patch]
    return merged


def _merge(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        earlier = merged.get(key)
        if isinstance(value, Mapping) and isinstance(earlier, Mapping):
            merged[key] = _merge(earlier, value)
        else:
            merged[key] = value
    return merged
