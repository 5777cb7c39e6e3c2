"""The pure Job builder: names, labels, the Job body, pod template patches, outputs."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes_asyncio.client import models

from eventflow.errors import ConfigError
from eventflow.executors.manifests import (
    JobOptions,
    build_job,
    job_labels,
    job_name,
    label_value,
    parse_termination_message,
)
from eventflow.executors.patching import strategic_merge
from eventflow.executors.protocol import StepKey, StepSpec

RUN = "0190a1b2c3d4e5f60"
KEY = StepKey(RUN, "extract", 1)
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
LABELS = {
    "app.kubernetes.io/managed-by": "eventflow",
    "eventflow.io/run": RUN,
    "eventflow.io/step": "extract",
    "eventflow.io/attempt": "1",
}
EVENTFLOW_ENV = [
    {"name": "EVENTFLOW_ATTEMPT", "value": "1"},
    {"name": "EVENTFLOW_OUTPUT_FILE", "value": "/dev/termination-log"},
    {"name": "EVENTFLOW_RUN_ID", "value": RUN},
    {"name": "EVENTFLOW_STEP", "value": "extract"},
]


def step(**fields: Any) -> StepSpec:
    defaults: dict[str, Any] = {"command": ["python", "-m", "extract"], "image": "python:3.12"}
    return StepSpec(KEY, **(defaults | fields))


def options(**fields: Any) -> JobOptions:
    return JobOptions(**{"namespace": "eventflow"} | fields)


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def unknown_fields(value: Any, type_name: str, path: str) -> list[str]:
    """Paths in `value` that the Kubernetes OpenAPI model `type_name` has no field for."""
    if type_name.startswith("list["):
        return [
            problem
            for index, item in enumerate(value)
            for problem in unknown_fields(item, type_name[5:-1], f"{path}[{index}]")
        ]
    model = getattr(models, type_name, None)
    if model is None:  # str, int, dict(str, str), object
        return []
    by_json = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    problems: list[str] = []
    for name, item in value.items():
        if name not in by_json:
            problems.append(f"{path}.{name}")
        else:
            problems += unknown_fields(item, model.openapi_types[by_json[name]], f"{path}.{name}")
    return problems


# --- job_name ---------------------------------------------------------------------------


def test_clean_key_is_named_plainly() -> None:
    """A hex run id, a DNS-label step and an attempt give `ef-<run>-<step>-<attempt>`."""
    assert job_name(KEY) == "ef-0190a1b2c3d4e5f60-extract-1"


def test_name_of_exactly_63_characters_stays_plain() -> None:
    """A plain name of 63 characters is kept as it is."""
    key = StepKey(RUN, "s" * 40, 1)
    assert job_name(key) == f"ef-{RUN}-{'s' * 40}-1"
    assert len(job_name(key)) == 63


def test_name_of_64_characters_is_cut_and_hashed() -> None:
    """One character more and the name becomes a prefix and a stable hash, within 63."""
    assert job_name(StepKey(RUN, "s" * 41, 1)) == f"ef-{RUN}-{'s' * 28}-h06526b0853ec"
    assert len(job_name(StepKey(RUN, "s" * 41, 1))) == 63


def test_hash_is_stable_across_releases() -> None:
    """The hashed names are pinned: a restarted eventflow must find the Jobs it created."""
    assert (
        job_name(StepKey(RUN, "load_data", 2)) == "ef-0190a1b2c3d4e5f60-load-data-2-hbf320c20b4b3"
    )
    assert job_name(StepKey(RUN, "x" * 60, 1)) == (
        "ef-0190a1b2c3d4e5f60-xxxxxxxxxxxxxxxxxxxxxxxxxxxx-hdb8cce254c34"
    )


@pytest.mark.parametrize(
    ("key", "prefix"),
    [
        (StepKey(RUN, "Extract", 1), "ef-0190a1b2c3d4e5f60-extract-1-h"),
        (StepKey(RUN, "load_data", 1), "ef-0190a1b2c3d4e5f60-load-data-1-h"),
        (StepKey(RUN, "lädt", 1), "ef-0190a1b2c3d4e5f60-l-dt-1-h"),
        (StepKey(RUN, "über", 1), "ef-0190a1b2c3d4e5f60-ber-1-h"),
        (StepKey("run-with-dash", "a", 1), "ef-run-with-dash-a-1-h"),
        (StepKey("", "a", 1), "ef-a-1-h"),
        (StepKey(RUN, "a", -1), "ef-0190a1b2c3d4e5f60-a-1-h"),
        (StepKey(RUN, "end-", 1), "ef-0190a1b2c3d4e5f60-end-1-h"),
    ],
)
def test_unclean_key_is_sanitized_and_hashed(key: StepKey, prefix: str) -> None:
    """Uppercase, underscores, unicode, dashed run ids, empty parts get a readable prefix and a hash."""
    name = job_name(key)
    assert name.startswith(prefix)
    assert len(name) == len(prefix) + 12
    assert DNS_LABEL.fullmatch(name)


def test_sanitizing_never_merges_two_steps() -> None:
    """`load_data`, `load-data` and `Load-Data` of one run get three names."""
    names = {job_name(StepKey(RUN, step, 1)) for step in ("load_data", "load-data", "Load-Data")}
    assert len(names) == 3


def test_long_keys_sharing_a_prefix_do_not_collide() -> None:
    """Two keys equal in their first 63 characters still get two names."""
    first, second = StepKey(RUN, "p" * 70 + "a", 1), StepKey(RUN, "p" * 70 + "b", 1)
    assert job_name(first)[:-13] == job_name(second)[:-13]
    assert job_name(first) != job_name(second)


def test_dashes_in_run_ids_cannot_fake_another_key() -> None:
    """Run `a-b` step `c` and run `a` step `b-c` read alike plainly, so they are hashed apart."""
    assert job_name(StepKey("a-b", "c", 1)) != job_name(StepKey("a", "b-c", 1))
    assert job_name(StepKey("a", "b-c", 1)) == "ef-a-b-c-1"


keys = st.builds(
    StepKey,
    st.one_of(st.text(max_size=40), st.from_regex(r"[0-9a-f]{1,20}", fullmatch=True)),
    st.one_of(st.text(max_size=70), st.from_regex(r"[a-z0-9][-a-z0-9_]{0,60}", fullmatch=True)),
    st.integers(min_value=-3, max_value=10**6),
)


@given(keys)
def test_job_name_is_always_a_dns_label(key: StepKey) -> None:
    """Whatever the key, the name is a DNS-1123 label of at most 63 characters."""
    name = job_name(key)
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name)
    assert job_name(key) == name


@given(st.lists(keys, unique=True, min_size=2, max_size=30))
def test_job_name_is_injective(sample: list[StepKey]) -> None:
    """Distinct keys get distinct names."""
    assert len({job_name(key) for key in sample}) == len(sample)


# --- labels -----------------------------------------------------------------------------


def test_job_labels_name_owner_run_step_attempt_and_trigger() -> None:
    """The labels the watch and the API select by, with the trigger when there is one."""
    assert job_labels(KEY, "etl-on-upload") == LABELS | {"eventflow.io/trigger": "etl-on-upload"}
    assert job_labels(KEY, None) == LABELS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("load_data", "load_data"),
        ("v1.2-rc", "v1.2-rc"),
        ("a" * 63, "a" * 63),
        ("a" * 64, "a" * 49 + "-h5adb8c3d4260"),
        ("Ünïcode value!", "n-code-value-hbb088e7d7348"),
        ("-lead", "lead-hbc9819ada528"),
        ("h0123456789ab", "h0123456789ab-h33107399f151"),
        ("!!!", "he4a6991b7dab"),
    ],
)
def test_label_value_is_kept_when_valid_and_hashed_otherwise(value: str, expected: str) -> None:
    """Valid values pass; long, invalid or hash-like ones get a sanitized prefix and a hash."""
    assert label_value(value) == expected


@given(st.lists(st.text(max_size=80), unique=True, min_size=1, max_size=30))
def test_label_values_are_valid_and_injective(values: list[str]) -> None:
    """Every result is a valid label value, and distinct inputs stay distinct."""
    results = [label_value(value) for value in values]
    assert all(len(result) <= 63 and LABEL_VALUE.fullmatch(result) for result in results)
    assert len(set(results)) == len(values)


def test_long_trigger_label_is_hashed() -> None:
    """A trigger name too long for a label value is shortened with a hash."""
    assert job_labels(KEY, "t" * 70)["eventflow.io/trigger"] == "t" * 49 + "-h7c9fb585dd46"


# --- build_job --------------------------------------------------------------------------


def test_minimal_step_builds_this_job() -> None:
    """A step with only an image and a command gives the smallest Job eventflow makes."""
    assert build_job(step(), options()) == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "ef-0190a1b2c3d4e5f60-extract-1",
            "namespace": "eventflow",
            "labels": LABELS,
            "annotations": {"eventflow.io/step-key": '["0190a1b2c3d4e5f60", "extract", 1]'},
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "step",
                            "image": "python:3.12",
                            "command": ["python", "-m", "extract"],
                            "env": EVENTFLOW_ENV,
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                },
            },
        },
    }


SECRET_REF = {"secretKeyRef": {"name": "db", "key": "password"}}
FULL_OPTIONS = options(
    service_account="runner",
    resources={"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m"}},
    node_selector={"pool": "batch"},
    tolerations=[{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
    affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    volumes=[{"name": "scratch", "emptyDir": {}}],
    volume_mounts=[{"name": "scratch", "mountPath": "/scratch"}],
    image_pull_secrets=["registry"],
    security_context={"runAsNonRoot": True, "runAsUser": 1000},
    container_security_context={"readOnlyRootFilesystem": True},
    env_from=[{"configMapRef": {"name": "etl"}}],
    env_refs={"DB_PASSWORD": SECRET_REF},
    ttl_seconds_after_finished=300,
    default_image="ghcr.io/acme/etl:1",
)
FULL_STEP = step(
    image=None,
    args=["raw/a.csv"],
    env={"ZONE": "eu", "AREA": "north"},
    working_dir="/work",
    timeout_seconds=899.5,
    labels={
        "eventflow.io/run": RUN,
        "eventflow.io/step": "extract",
        "eventflow.io/trigger": "etl-on-upload",
    },
    annotations={"eventflow.io/event-id": "evt-1"},
)
FULL_LABELS = LABELS | {"eventflow.io/trigger": "etl-on-upload"}


def test_full_step_builds_this_job() -> None:
    """Every option lands in its Kubernetes field; env is sorted with the reference in it."""
    assert build_job(FULL_STEP, FULL_OPTIONS) == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "ef-0190a1b2c3d4e5f60-extract-1",
            "namespace": "eventflow",
            "labels": FULL_LABELS,
            "annotations": {
                "eventflow.io/event-id": "evt-1",
                "eventflow.io/step-key": '["0190a1b2c3d4e5f60", "extract", 1]',
            },
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 900,
            "ttlSecondsAfterFinished": 300,
            "template": {
                "metadata": {"labels": FULL_LABELS},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "runner",
                    "nodeSelector": {"pool": "batch"},
                    "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {
                        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
                    },
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                    "imagePullSecrets": [{"name": "registry"}],
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                    "containers": [
                        {
                            "name": "step",
                            "image": "ghcr.io/acme/etl:1",
                            "command": ["python", "-m", "extract"],
                            "args": ["raw/a.csv"],
                            "workingDir": "/work",
                            "env": [
                                {"name": "AREA", "value": "north"},
                                {"name": "DB_PASSWORD", "valueFrom": SECRET_REF},
                                *EVENTFLOW_ENV,
                                {"name": "ZONE", "value": "eu"},
                            ],
                            "envFrom": [{"configMapRef": {"name": "etl"}}],
                            "resources": {
                                "limits": {"memory": "256Mi"},
                                "requests": {"cpu": "100m"},
                            },
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                            "securityContext": {"readOnlyRootFilesystem": True},
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                },
            },
        },
    }


def test_every_field_of_the_full_job_is_a_real_batch_v1_field() -> None:
    """Checked against the Kubernetes client's OpenAPI models: no misspelt field name."""
    assert unknown_fields(build_job(FULL_STEP, FULL_OPTIONS), "V1Job", "job") == []


def test_field_check_catches_a_misspelt_field() -> None:
    """The check above can fail: a wrong field name is reported with its path."""
    job = build_job(step(), options())
    pod_spec(job)["containers"][0]["workdir"] = "/"
    assert unknown_fields(job, "V1Job", "job") == ["job.spec.template.spec.containers[0].workdir"]


def test_job_shares_nothing_mutable_with_the_options() -> None:
    """Changing one built Job leaves the options, and so the next Job, as they were."""
    job = build_job(FULL_STEP, FULL_OPTIONS)
    pod_spec(job)["nodeSelector"]["pool"] = "changed"
    pod_spec(job)["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    assert FULL_OPTIONS.node_selector == {"pool": "batch"}
    assert build_job(FULL_STEP, FULL_OPTIONS) != job


def test_ttl_of_zero_is_kept() -> None:
    """ttlSecondsAfterFinished 0 (delete at once) is a value, not an absent one."""
    assert build_job(step(), options(ttl_seconds_after_finished=0))["spec"] == {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 0,
        "template": build_job(step(), options())["spec"]["template"],
    }


def test_step_labels_are_sanitized_and_eventflow_labels_win() -> None:
    """Extra step labels pass with valid values; the key's own labels cannot be overridden."""
    labels = {"team": "data eng", "eventflow.io/attempt": "7"}
    job = build_job(step(labels=labels), options())
    assert job["metadata"]["labels"] == LABELS | {"team": "data-eng-h001b57b739bc"}


def test_eventflow_variables_win_over_the_steps() -> None:
    """A step cannot point EVENTFLOW_OUTPUT_FILE elsewhere: outputs are the termination log."""
    env = build_job(step(env={"EVENTFLOW_OUTPUT_FILE": "/tmp/out"}), options())
    assert pod_spec(env)["containers"][0]["env"] == EVENTFLOW_ENV


@pytest.mark.parametrize(
    ("timeout", "deadline"),
    [(0, 1), (0.001, 1), (1.0, 1), (1.000001, 2), (59.5, 60), (900, 900), (86400.2, 86401)],
)
def test_timeout_rounds_up_to_whole_seconds(timeout: float, deadline: int) -> None:
    """activeDeadlineSeconds is the timeout rounded up, at least 1."""
    job = build_job(step(timeout_seconds=timeout), options())
    assert job["spec"]["activeDeadlineSeconds"] == deadline


def test_no_timeout_sets_no_deadline() -> None:
    """A step without a timeout runs as long as it takes."""
    assert "activeDeadlineSeconds" not in build_job(step(), options())["spec"]


@pytest.mark.parametrize("timeout", [-1.0, math.inf, math.nan])
def test_impossible_timeout_is_refused(timeout: float) -> None:
    """Negative, infinite and NaN timeouts are errors naming the step."""
    with pytest.raises(ConfigError) as caught:
        build_job(step(timeout_seconds=timeout), options())
    assert str(caught.value) == (
        f"step {RUN}/extract#1: timeout: {timeout!r} is not accepted; give a finite number of"
        " seconds, 0 or more"
    )


def test_step_without_image_and_no_default_is_refused() -> None:
    """No image anywhere is an error that says where to set one."""
    with pytest.raises(ConfigError) as caught:
        build_job(step(image=None), options())
    assert str(caught.value) == (
        f"step {RUN}/extract#1: no image; set `image` on the step, or a default image in the"
        " Kubernetes executor settings"
    )


def test_step_image_wins_over_the_default() -> None:
    """The default image is used only when the step names none."""
    job = build_job(step(), options(default_image="busybox"))
    assert pod_spec(job)["containers"][0]["image"] == "python:3.12"


@pytest.mark.parametrize("name", ["1ST", "A-B", "", "PATH=x", "ÄRGER", "A B"])
def test_env_name_that_is_not_an_identifier_is_refused(name: str) -> None:
    """Variable names are C identifiers; the error names the step and the variable."""
    with pytest.raises(ConfigError) as caught:
        build_job(step(env={name: "1"}), options())
    assert str(caught.value) == (
        f"step {RUN}/extract#1: env.{name}: {name!r} is not a variable name; write letters,"
        " digits and '_', not starting with a digit, such as DATABASE_URL"
    )


def test_env_ref_name_that_is_not_an_identifier_is_refused() -> None:
    """A bad name among the references is refused when the options are made."""
    with pytest.raises(ConfigError) as caught:
        options(env_refs={"db-password": SECRET_REF})
    assert str(caught.value) == (
        "kubernetes.envRefs.db-password: 'db-password' is not a variable name; write letters,"
        " digits and '_', not starting with a digit, such as DATABASE_URL"
    )


@pytest.mark.parametrize(
    "source",
    [{}, {"secretRef": {"name": "db"}}, {"secretKeyRef": {}, "fieldRef": {}}, "secretKeyRef"],
)
def test_env_ref_that_is_not_a_value_source_is_refused(source: Any) -> None:
    """A reference is exactly one of the four valueFrom sources."""
    with pytest.raises(ConfigError) as caught:
        options(env_refs={"DB": source})
    assert str(caught.value) == (
        f"kubernetes.envRefs.DB: {source!r} is not a value source; write one of configMapKeyRef,"
        " fieldRef, resourceFieldRef, secretKeyRef, such as"
        " {secretKeyRef: {name: db, key: password}}"
    )


def test_variable_set_as_value_and_reference_is_refused() -> None:
    """One variable cannot be both a value and a reference: the user keeps one."""
    with pytest.raises(ConfigError) as caught:
        build_job(step(env={"DB": "x"}), options(env_refs={"DB": SECRET_REF}))
    assert str(caught.value) == (
        f"step {RUN}/extract#1: env.DB is set both as a value (env) and as a reference"
        " (kubernetes.envRefs); keep one of them"
    )


@pytest.mark.parametrize("namespace", ["", "Prod", "a_b", "-a", "n" * 64])
def test_invalid_namespace_is_refused(namespace: str) -> None:
    """The namespace must be a DNS-1123 label."""
    with pytest.raises(ConfigError) as caught:
        options(namespace=namespace)
    assert str(caught.value) == (
        f"k8s.namespace: {namespace!r} is not a namespace name; write at most 63 lowercase"
        " letters, digits and '-', starting and ending alphanumeric"
    )


def test_negative_ttl_is_refused() -> None:
    """ttlSecondsAfterFinished cannot be negative."""
    with pytest.raises(ConfigError) as caught:
        options(ttl_seconds_after_finished=-1)
    assert str(caught.value) == (
        "kubernetes.ttlSecondsAfterFinished: -1 is negative; write 0 or more seconds, or leave it out"
        " to keep finished Jobs"
    )


# --- pod template patches ---------------------------------------------------------------


def patched(patch: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The pod spec of the minimal step's Job under `patch`."""
    return pod_spec(build_job(step(), options(pod_template_patches=[patch], **fields)))


STEP_CONTAINER = pod_spec(build_job(step(), options()))["containers"][0]


def test_patch_merges_maps_recursively() -> None:
    """A map in the patch adds to the map in the Job; fields not named stay."""
    spec = patched(
        {"spec": {"nodeSelector": {"disk": "ssd"}, "priorityClassName": "low"}},
        node_selector={"pool": "batch"},
    )
    assert spec["nodeSelector"] == {"pool": "batch", "disk": "ssd"}
    assert spec["priorityClassName"] == "low"


def test_patch_merges_the_step_container_by_name_and_adds_a_sidecar() -> None:
    """`containers` entries merge by name: the step gets resources, a sidecar is appended."""
    spec = patched(
        {
            "spec": {
                "containers": [
                    {"name": "proxy", "image": "envoy:1"},
                    {"name": "step", "resources": {"limits": {"cpu": "1"}}},
                ]
            }
        }
    )
    assert spec["containers"] == [
        STEP_CONTAINER | {"resources": {"limits": {"cpu": "1"}}},
        {"name": "proxy", "image": "envoy:1"},
    ]


def test_patch_merges_env_and_volumes_by_name() -> None:
    """An env entry of the same name is overridden in place; volumes are matched by name."""
    spec = patched(
        {
            "spec": {
                "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
                "containers": [{"name": "step", "env": [{"name": "EVENTFLOW_STEP", "value": "x"}]}],
            }
        },
        volumes=[{"name": "scratch", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}],
    )
    env = list(EVENTFLOW_ENV)
    env[3] = {"name": "EVENTFLOW_STEP", "value": "x"}
    assert spec["containers"][0]["env"] == env
    assert spec["volumes"] == [
        {"name": "scratch", "emptyDir": {"medium": "Memory"}},
        {"name": "cache", "emptyDir": {}},
    ]


def test_patch_merges_volume_mounts_by_mount_path() -> None:
    """volumeMounts are matched by mountPath, as Kubernetes does."""
    spec = patched(
        {
            "spec": {
                "containers": [
                    {"name": "step", "volumeMounts": [{"mountPath": "/scratch", "readOnly": True}]}
                ]
            }
        },
        volume_mounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/scratch", "readOnly": True}
    ]


def test_patch_replaces_other_lists() -> None:
    """Lists without a merge key (tolerations, args) are replaced whole."""
    spec = patched(
        {"spec": {"tolerations": [{"operator": "Exists"}]}},
        tolerations=[{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}],
    )
    assert spec["tolerations"] == [{"operator": "Exists"}]


def test_patch_delete_directive_removes_a_map() -> None:
    """`$patch: delete` on a map removes that field from the Job."""
    spec = patched({"spec": {"affinity": {"$patch": "delete"}}}, affinity={"podAffinity": {}})
    assert "affinity" not in spec


def test_patch_delete_directive_removes_a_named_entry() -> None:
    """`$patch: delete` on a named list entry removes that entry only."""
    spec = patched(
        {"spec": {"volumes": [{"name": "cache", "$patch": "delete"}]}},
        volumes=[{"name": "scratch", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}],
    )
    assert spec["volumes"] == [{"name": "scratch", "emptyDir": {}}]


def test_patch_replace_directive_replaces_a_map_whole() -> None:
    """`$patch: replace` drops what the Job had in that map."""
    spec = patched(
        {"spec": {"securityContext": {"$patch": "replace", "fsGroup": 2000}}},
        security_context={"runAsNonRoot": True},
    )
    assert spec["securityContext"] == {"fsGroup": 2000}


def test_patch_null_removes_a_field() -> None:
    """A null value in the patch removes the field, as in a JSON merge patch."""
    assert "serviceAccountName" not in patched(
        {"spec": {"serviceAccountName": None}}, service_account="runner"
    )


def test_patch_adds_pod_annotations_and_keeps_eventflow_labels() -> None:
    """Pod metadata merges too: annotations and extra labels are added."""
    job = build_job(
        step(),
        options(
            pod_template_patches=[{"metadata": {"annotations": {"a": "1"}, "labels": {"b": "2"}}}]
        ),
    )
    assert job["spec"]["template"]["metadata"] == {
        "labels": LABELS | {"b": "2"},
        "annotations": {"a": "1"},
    }


def test_patch_is_not_changed_nor_shared() -> None:
    """Building leaves the patch as it was, and the Job holds copies of its values."""
    patch = {"spec": {"containers": [{"name": "step", "resources": {"limits": {"cpu": "1"}}}]}}
    spec = patched(patch)
    spec["containers"][0]["resources"]["limits"]["cpu"] = "2"
    assert patch == {
        "spec": {"containers": [{"name": "step", "resources": {"limits": {"cpu": "1"}}}]}
    }


@pytest.mark.parametrize(
    "patch",
    [
        {"spec": {"containers": [{"name": "step", "$patch": "delete"}]}},
        {"spec": {"containers": None}},
        {"spec": {"containers": {"name": "main"}}},
        {"spec": {"$patch": "replace", "restartPolicy": "Never", "containers": [{"name": "m"}]}},
    ],
)
def test_patch_that_removes_or_renames_the_step_container_is_refused(
    patch: dict[str, Any],
) -> None:
    """The step runs in the container `step`; a patch cannot take it away."""
    with pytest.raises(ConfigError) as caught:
        patched(patch)
    assert str(caught.value) == (
        "kubernetes.podTemplate.spec.containers: the patch removes or renames the container 'step',"
        " which runs the step; patch it by name instead: containers: [{name: step, ...}]"
    )


def test_patch_that_changes_the_restart_policy_is_refused() -> None:
    """Pods restart Never: eventflow owns retries."""
    with pytest.raises(ConfigError) as caught:
        patched({"spec": {"restartPolicy": "OnFailure"}})
    assert str(caught.value) == (
        "kubernetes.podTemplate.spec.restartPolicy: 'OnFailure' is not accepted; eventflow retries"
        " steps itself, so their pods restart Never; remove it"
    )


def test_patch_that_changes_an_eventflow_label_is_refused() -> None:
    """The watch finds pods by eventflow's labels, so a patch cannot change them."""
    with pytest.raises(ConfigError) as caught:
        patched({"metadata": {"labels": {"eventflow.io/run": "other"}}})
    assert str(caught.value) == (
        "kubernetes.podTemplate.metadata.labels.eventflow.io/run: 'other' is not accepted; eventflow"
        f" finds its pods by this label and sets it to '{RUN}'; remove it"
    )


def test_patch_entry_without_its_merge_key_is_refused() -> None:
    """A container entry without a name cannot be merged; the error gives its path."""
    with pytest.raises(ConfigError) as caught:
        patched({"spec": {"containers": [{"name": "step"}, {"image": "envoy"}]}})
    assert str(caught.value) == (
        "kubernetes.podTemplate.spec.containers[1]: entries of this list are merged by 'name', so each"
        " needs one; got {'image': 'envoy'}"
    )


def test_unknown_patch_directive_is_refused() -> None:
    """Only delete and replace are directives; a typo is an error with its path."""
    with pytest.raises(ConfigError) as caught:
        patched({"spec": {"affinity": {"$patch": "remove"}}})
    assert str(caught.value) == (
        "kubernetes.podTemplate.spec.affinity.$patch: 'remove' is not a directive eventflow knows;"
        " write delete or replace, or leave $patch out to merge"
    )


def test_deleting_the_whole_template_is_refused() -> None:
    """`$patch: delete` at the top would leave no pod at all."""
    with pytest.raises(ConfigError) as caught:
        strategic_merge({"spec": {}}, {"$patch": "delete"}, "kubernetes.podTemplate")
    assert str(caught.value) == (
        "kubernetes.podTemplate.$patch: delete would remove it all; delete fields inside it"
    )


# --- termination messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "outputs"),
    [
        ('{"rows": 3}', {"rows": 3}),
        ('  {"rows": 3, "file": {"key": "a.csv"}}\n', {"rows": 3, "file": {"key": "a.csv"}}),
        ("{}", {}),
        ('reading a.csv\nwrote 3 rows\n{"rows": 3}\n', {"rows": 3}),
        ("", None),
        ("  \n", None),
        ("[1, 2]", None),
        ('"text"', None),
        ("3", None),
        ("null", None),
        ("Traceback (most recent call last):\nValueError: bad", None),
        ('{"rows": 3', None),
        ('{"rows": 3}\nTraceback: boom', None),
        ("[" * 100_000, None),
    ],
)
def test_termination_message_gives_outputs_only_for_a_json_object(
    text: str, outputs: dict[str, Any] | None
) -> None:
    """The whole message, or else its last line, as a JSON object; anything else is None."""
    assert parse_termination_message(text) == outputs
