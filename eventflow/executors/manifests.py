"""batch/v1 Job manifests for step attempts: the pure core of the Kubernetes executor.

`build_job` turns one `StepSpec` and the merged `JobOptions` into a Job as a plain JSON dict;
`job_options` lays a merged `kubernetes:` block over the executor's own `JobOptions`.
Its name and labels are deterministic: creating an attempt twice answers 409 (promise 2), and
one label-selected watch sees every Job eventflow owns. `parse_termination_message` reads a
step's outputs from its container's termination message, so no log is scraped for them.

It does no I/O and imports no Kubernetes client: it does not create, watch or delete Jobs
(executors/kubernetes.py does), and it does not merge the installation's, workflow's and
step's `kubernetes:` blocks (resources/kubernetes.py `merge_options` does). The pod template
patches themselves are applied by executors/patching.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventflow.errors import ConfigError
from eventflow.executors.patching import named, plain, strategic_merge
from eventflow.executors.protocol import OUTPUT_FILE_ENV, StepKey, StepSpec

CONTAINER = "step"
TERMINATION_LOG = "/dev/termination-log"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "eventflow"
RUN_LABEL = "eventflow.io/run"
STEP_LABEL = "eventflow.io/step"
ATTEMPT_LABEL = "eventflow.io/attempt"
TRIGGER_LABEL = "eventflow.io/trigger"
# Names and labels may be shortened or hashed; this keeps the exact key for people and tools.
KEY_ANNOTATION = "eventflow.io/step-key"

_MAX_LABEL = 63
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_TAGGED = re.compile(r"(^|-)h[0-9a-f]{12}$")
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The `kubernetes:` block's fields that map onto a JobOptions field as they are.
_BLOCK_FIELDS = {
    "serviceAccountName": "service_account",
    "resources": "resources",
    "nodeSelector": "node_selector",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "volumes": "volumes",
    "volumeMounts": "volume_mounts",
    "securityContext": "security_context",
    "containerSecurityContext": "container_security_context",
    "envFrom": "env_from",
    "ttlSecondsAfterFinished": "ttl_seconds_after_finished",
    "labels": "labels",
    "annotations": "annotations",
}
_VALUE_SOURCES = frozenset({"configMapKeyRef", "secretKeyRef", "fieldRef", "resourceFieldRef"})


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How steps become Jobs: installation, workflow and step defaults, already merged.

    Fields hold Kubernetes JSON as written (`resources`, `tolerations`, ...); `env_refs` maps
    a variable to a `valueFrom` source, such as `{"secretKeyRef": {"name": "db", "key": "pw"}}`.
    """

    namespace: str
    service_account: str | None = None
    resources: Mapping[str, Any] | None = None
    node_selector: Mapping[str, str] | None = None
    tolerations: Sequence[Mapping[str, Any]] = ()
    affinity: Mapping[str, Any] | None = None
    volumes: Sequence[Mapping[str, Any]] = ()
    volume_mounts: Sequence[Mapping[str, Any]] = ()
    image_pull_secrets: Sequence[str] = ()
    security_context: Mapping[str, Any] | None = None
    container_security_context: Mapping[str, Any] | None = None
    env_from: Sequence[Mapping[str, Any]] = ()
    env_refs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ttl_seconds_after_finished: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    pod_template_patches: Sequence[Mapping[str, Any]] = ()
    default_image: str | None = None

    def __post_init__(self) -> None:
        if len(self.namespace) > _MAX_LABEL or not _DNS_LABEL.fullmatch(self.namespace):
            raise ConfigError(
                f"k8s.namespace: {self.namespace!r} is not a namespace name; write at most 63"
                " lowercase letters, digits and '-', starting and ending alphanumeric"
            )
        ttl = self.ttl_seconds_after_finished
        if ttl is not None and ttl < 0:
            raise ConfigError(
                f"kubernetes.ttlSecondsAfterFinished: {ttl} is negative; write 0 or more seconds,"
                " or leave it out to keep finished Jobs"
            )
        for name, source in self.env_refs.items():
            _check_env_name(name, f"kubernetes.envRefs.{name}")
            kinds = list(source) if isinstance(source, Mapping) else []
            if len(kinds) != 1 or kinds[0] not in _VALUE_SOURCES:
                raise ConfigError(
                    f"kubernetes.envRefs.{name}: {source!r} is not a value source; write one of"
                    f" {', '.join(sorted(_VALUE_SOURCES))}, such as"
                    " {secretKeyRef: {name: db, key: password}}"
                )


def job_name(key: StepKey) -> str:
    """`ef-<run>-<step>-<attempt>`, or when that is not a short, clean DNS-1123 label, a
    readable prefix of it and a hash of the whole key.

    Distinct keys get distinct names: the plain form is used only when it can be read back
    (the run id holds no '-', the step is a DNS label, the attempt is digits), and the
    hashed form ends in `-h<hex>`, which no plain form does. Sanitizing alone would let
    steps `load_data` and `load-data` of one run share a name.
    """
    plain = f"ef-{key.run_id}-{key.step}-{key.attempt}"
    readable = (
        len(plain) <= _MAX_LABEL
        and re.fullmatch(r"[a-z0-9]+", key.run_id) is not None
        and _DNS_LABEL.fullmatch(key.step) is not None
        and key.attempt >= 0
    )
    if readable:
        return plain
    prefix = re.sub(r"[^a-z0-9]+", "-", plain.lower())
    return _shorten(prefix, _tag(key.run_id, key.step, key.attempt))


def label_value(value: str) -> str:
    """`value` when Kubernetes takes it as a label value, else a sanitized prefix and a hash.

    Injective like `job_name`: a valid value that already looks hashed is hashed too.
    """
    if len(value) <= _MAX_LABEL and _LABEL_VALUE.fullmatch(value) and not _TAGGED.search(value):
        return value
    return _shorten(re.sub(r"[^A-Za-z0-9._-]+", "-", value), _tag(value))


def job_labels(key: StepKey, trigger: str | None) -> dict[str, str]:
    """The labels the watch selects by: owner, run, step, attempt and trigger."""
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        RUN_LABEL: label_value(key.run_id),
        STEP_LABEL: label_value(key.step),
        ATTEMPT_LABEL: label_value(str(key.attempt)),
    }
    if trigger is not None:
        labels[TRIGGER_LABEL] = label_value(trigger)
    return labels


def build_job(step: StepSpec, options: JobOptions) -> dict[str, Any]:
    """The batch/v1 Job that runs one attempt of `step`.

    The Job never retries (backoffLimit 0): eventflow makes attempt N+1 itself, so retry
    policy, `when` and outputs behave alike on every executor.
    """
    key = step.key
    image = step.image or options.default_image
    if not image:
        raise ConfigError(
            f"step {key}: no image; set `image` on the step, or a default image in the"
            " Kubernetes executor settings"
        )
    # The step's labels and annotations come from eventflow, so their keys are valid; the
    # options' were checked when loaded. eventflow's own win: the watch selects by them.
    own = job_labels(key, step.labels.get(TRIGGER_LABEL))
    labels = {
        **options.labels,
        **{name: label_value(value) for name, value in step.labels.items()},
        **own,
    }
    annotations = {
        **options.annotations,
        **step.annotations,
        KEY_ANNOTATION: json.dumps([key.run_id, key.step, key.attempt]),
    }
    container = {
        "name": CONTAINER,
        "image": image,
        "env": _env(step, options),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **_present(
            command=step.command,
            args=step.args,
            workingDir=step.working_dir,
            resources=options.resources,
            volumeMounts=options.volume_mounts,
            envFrom=options.env_from,
            securityContext=options.container_security_context,
        ),
    }
    pod = {
        "restartPolicy": "Never",
        "containers": [container],
        **_present(
            serviceAccountName=options.service_account,
            nodeSelector=options.node_selector,
            tolerations=options.tolerations,
            affinity=options.affinity,
            volumes=options.volumes,
            imagePullSecrets=[{"name": secret} for secret in options.image_pull_secrets],
            securityContext=options.security_context,
        ),
    }
    metadata = {"labels": dict(labels), **_present(annotations=options.annotations)}
    template: dict[str, Any] = {"metadata": metadata, "spec": pod}
    for index, patch in enumerate(options.pod_template_patches):
        where = "kubernetes.podTemplate" + (f" (patch {index + 1})" if index else "")
        template = strategic_merge(template, patch, where)
    if options.pod_template_patches:
        _check_template(template, own)
    spec = {
        "backoffLimit": 0,
        "template": template,
        **_present(
            activeDeadlineSeconds=_deadline(step.timeout_seconds, key),
            ttlSecondsAfterFinished=options.ttl_seconds_after_finished,
        ),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(key),
            "namespace": options.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def job_options(base: JobOptions, block: Mapping[str, Any]) -> JobOptions:
    """`base` with a merged `kubernetes:` block (`merge_options`) laid over it: each field
    the block sets replaces base's, its pod template patches follow base's."""
    fields: dict[str, Any] = {}
    for name, value in block.items():
        if name == "podTemplate":
            fields["pod_template_patches"] = (*base.pod_template_patches, *value)
        elif name == "envRefs":
            fields["env_refs"] = {variable: _value_from(ref) for variable, ref in value.items()}
        elif name == "imagePullSecrets":
            fields["image_pull_secrets"] = tuple(value)
        else:
            fields[_BLOCK_FIELDS[name]] = value
    return dataclasses.replace(base, **fields)


def _value_from(ref: Mapping[str, Any]) -> dict[str, Any]:
    """{secret: db, key: pw} -> {secretKeyRef: {name: db, key: pw}}; same for configMap."""
    kind = "secretKeyRef" if "secret" in ref else "configMapKeyRef"
    source = {"name": ref.get("secret", ref.get("configMap")), "key": ref["key"]}
    return {kind: source | ({"optional": ref["optional"]} if "optional" in ref else {})}


def parse_termination_message(text: str) -> dict[str, Any] | None:
    """The outputs in a finished container's termination message, or None if it has none.

    The message is what the step wrote to /dev/termination-log (the kubelet keeps 4096 bytes
    of it); when a failed step wrote nothing, FallbackToLogsOnError puts its log's tail there
    instead. So, like the local executor, the last line is tried when the whole is not JSON.
    """
    stripped = text.strip()
    if not stripped:
        return None
    for candidate in (stripped, stripped.splitlines()[-1]):
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        return value if isinstance(value, dict) else None
    return None


def _check_template(template: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    """Refuse a patched pod template that would break what eventflow relies on."""
    spec = template.get("spec")
    pod = spec if isinstance(spec, Mapping) else {}
    containers = pod.get("containers")
    if not isinstance(containers, list) or not any(named(c, CONTAINER) for c in containers):
        raise ConfigError(
            f"kubernetes.podTemplate.spec.containers: the patch removes or renames the container"
            f" {CONTAINER!r}, which runs the step; patch it by name instead:"
            f" containers: [{{name: {CONTAINER}, ...}}]"
        )
    if pod.get("restartPolicy") != "Never":
        raise ConfigError(
            "kubernetes.podTemplate.spec.restartPolicy:"
            f" {pod.get('restartPolicy')!r} is not accepted; eventflow retries steps itself,"
            " so their pods restart Never; remove it"
        )
    metadata = template.get("metadata")
    patched = metadata.get("labels") if isinstance(metadata, Mapping) else None
    actual = patched if isinstance(patched, Mapping) else {}
    for name, value in labels.items():
        if actual.get(name) != value:
            raise ConfigError(
                f"kubernetes.podTemplate.metadata.labels.{name}: {actual.get(name)!r} is not"
                f" accepted; eventflow finds its pods by this label and sets it to {value!r};"
                " remove it"
            )


def _env(step: StepSpec, options: JobOptions) -> list[dict[str, Any]]:
    """Values, references and eventflow's variables (which win, as on the local executor)."""
    for name in step.env:
        _check_env_name(name, f"step {step.key}: env.{name}")
        if name in options.env_refs:
            raise ConfigError(
                f"step {step.key}: env.{name} is set both as a value (env) and as a reference"
                " (kubernetes.envRefs); keep one of them"
            )
    key = step.key
    values = {
        **step.env,
        OUTPUT_FILE_ENV: TERMINATION_LOG,
        "EVENTFLOW_RUN_ID": key.run_id,
        "EVENTFLOW_STEP": key.step,
        "EVENTFLOW_ATTEMPT": str(key.attempt),
    }
    refs = {name: {"valueFrom": plain(source)} for name, source in options.env_refs.items()}
    entries = {**refs, **{name: {"value": value} for name, value in values.items()}}
    return [{"name": name, **entries[name]} for name in sorted(entries)]


def _check_env_name(name: str, where: str) -> None:
    if not _C_IDENTIFIER.fullmatch(name):
        raise ConfigError(
            f"{where}: {name!r} is not a variable name; write letters, digits and '_',"
            " not starting with a digit, such as DATABASE_URL"
        )


def _deadline(timeout: float | None, key: StepKey) -> int | None:
    if timeout is None:
        return None
    if not math.isfinite(timeout) or timeout < 0:
        raise ConfigError(
            f"step {key}: timeout: {timeout!r} is not accepted; give a finite number of"
            " seconds, 0 or more"
        )
    # Kubernetes counts whole seconds; rounding down would kill a step before its time.
    return max(1, math.ceil(timeout))


def _tag(*parts: str | int) -> str:
    return "h" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _shorten(prefix: str, tag: str) -> str:
    """`prefix-tag` within 63 characters, the prefix cut and trimmed to end alphanumeric."""
    head = prefix[: _MAX_LABEL - len(tag) - 1].strip("-_.")
    return f"{head}-{tag}" if head else tag


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that are set, as JSON-ready copies; 0 is set, None and empty are not."""
    return {name: plain(value) for name, value in fields.items() if value or value == 0}
