"""The `kubernetes:` block: its strict models and errors, merging installation -> workflow ->
step, and what the merged block makes of a Job."""

from __future__ import annotations

import copy
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from eventflow.errors import ConfigError
from eventflow.executors.manifests import JobOptions, build_job, job_options
from eventflow.executors.protocol import StepKey, StepSpec
from eventflow.resources.kubernetes import (
    KubernetesOptions,
    layers,
    merge_options,
    parse_quantity,
)
from eventflow.resources.loading import load_documents
from eventflow.resources.models import WorkflowSpec
from eventflow.runs.planning import CompiledWorkflow, render_step
from eventflow.settings import Settings
from tests.unit.test_manifests import unknown_fields

KEY = StepKey("0190a1b2c3d4e5f60", "extract", 1)
BASE = JobOptions(namespace="eventflow", ttl_seconds_after_finished=3600)


def block(**fields: Any) -> dict[str, Any]:
    """One layer as the YAML block `fields` gives it, validated."""
    [layer] = layers(KubernetesOptions.model_validate(fields)) or ({},)
    return layer


# --- quantities -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        (".5", Decimal("0.5")),
        ("1Ki", Decimal(1024)),
        ("1Gi", Decimal(1024**3)),
        ("2Ei", Decimal(2 * 1024**6)),
        ("1k", Decimal(1000)),
        ("1M", Decimal(10**6)),
        ("1E", Decimal(10**18)),
        ("1e3", Decimal(1000)),
        ("1E-3", Decimal("0.001")),
        ("+1", Decimal(1)),
        ("-1", Decimal(-1)),
    ],
)
def test_quantities_read_as_kubernetes_reads_them(text: str, value: Decimal) -> None:
    """Binary and decimal suffixes, exponents and signs give Kubernetes' value."""
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["500x", "", "Gi", "1 Gi", "1gi", "1.2.3", "1e", "m", "0x10"])
def test_text_outside_the_quantity_grammar_is_refused(text: str) -> None:
    """Anything the grammar does not produce is refused, saying what to write."""
    with pytest.raises(ValueError, match="is not a Kubernetes quantity") as caught:
        parse_quantity(text)
    assert str(caught.value) == (
        f"{text!r} is not a Kubernetes quantity; write a number with an optional suffix,"
        " such as 500m or 2 (CPU) and 512Mi or 1Gi (memory)"
    )


def test_numbers_in_yaml_are_taken_as_quantities() -> None:
    """`cpu: 1` and `cpu: 0.5` (YAML numbers) become the quantities '1' and '0.5'."""
    options = KubernetesOptions.model_validate({"resources": {"limits": {"cpu": 1, "x": 0.5}}})
    assert options.resources is not None
    assert options.resources.limits == {"cpu": "1", "x": "0.5"}


# --- errors at load time ----------------------------------------------------------------

WORKFLOW = """\
apiVersion: eventflow.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: w}
spec:
  steps:
    - name: s
      command: [run]
      kubernetes:
%s
"""


def problems(tmp_path: Path, step_block: str) -> list[str]:
    """Loading a workflow whose step's `kubernetes:` block is `step_block` (indented 8)."""
    path = tmp_path / "f.yaml"
    path.write_text(WORKFLOW % textwrap.indent(textwrap.dedent(step_block), " " * 8))
    located, found = load_documents([path])
    assert located == []
    return [str(problem).removeprefix(f"{tmp_path}/") for problem in found]


PLACE = "WorkflowTemplate/w: spec.steps[0].kubernetes"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (
            "resources: {limits: {cpu: 500x}}",
            "f.yaml:9: {place}.resources.limits.cpu: '500x' is not a Kubernetes quantity;"
            " write a number with an optional suffix, such as 500m or 2 (CPU) and 512Mi or"
            " 1Gi (memory)",
        ),
        (
            "resources: {requests: {memory: -1Gi}}",
            "f.yaml:9: {place}.resources.requests.memory: '-1Gi' is negative; a resource"
            " quantity is 0 or more",
        ),
        (
            "resources: {requests: {cpu: '2'}, limits: {cpu: 1500m}}",
            "f.yaml:9: {place}.resources: requests.cpu '2' is more than limits.cpu '1500m';"
            " Kubernetes refuses such a Pod: lower the request or raise the limit",
        ),
        (
            "resources: {limits: {'bad name!': 1}}",
            "f.yaml:9: {place}.resources.limits: 'bad name!' is not a resource name; write"
            " an optional DNS prefix and '/', then letters, digits, '-', '_' and '.', such"
            " as example.com/team",
        ),
        (
            "serviceAcount: runner",
            "f.yaml:9: {place}.serviceAcount: unknown field 'serviceAcount'; known fields:"
            " serviceAccountName, resources, nodeSelector, tolerations, affinity, volumes,"
            " volumeMounts, imagePullSecrets, securityContext, containerSecurityContext,"
            " envFrom, envRefs, ttlSecondsAfterFinished, labels, annotations, podTemplate",
        ),
        (
            "serviceAccountName: Runner_1",
            "f.yaml:9: {place}.serviceAccountName: 'Runner_1' is not an object name; write"
            " lowercase letters, digits, '-' and '.'",
        ),
        (
            "envRefs: {PW: {secret: db, configMap: db, key: pw}}",
            "f.yaml:9: {place}.envRefs.PW: give exactly one of secret and configMap, such as"
            " {secret: db, key: password} or {configMap: settings, key: level}",
        ),
        (
            "envRefs: {PW: {secret: db}}",
            "f.yaml:9: {place}.envRefs.PW.key: required field missing",
        ),
        (
            "envFrom: [{prefix: DB_}]",
            "f.yaml:9: {place}.envFrom[0]: give exactly one of secretRef and configMapRef,"
            " such as {secretRef: {name: db}}",
        ),
        (
            "volumes: [{name: scratch, emptyDir: {}, secret: {secretName: s}}]",
            "f.yaml:9: {place}.volumes[0]: volume 'scratch' has emptyDir, secret; give exactly"
            " one source, such as emptyDir: {}, secret: {secretName: x}, configMap: {name: x}"
            " or persistentVolumeClaim: {claimName: x}",
        ),
        (
            "volumes: [{name: scratch, emptyDirr: {}}]",
            "f.yaml:9: {place}.volumes[0]: volume 'scratch' has emptyDirr; give exactly"
            " one source, such as emptyDir: {}, secret: {secretName: x}, configMap: {name: x}"
            " or persistentVolumeClaim: {claimName: x}",
        ),
        (
            "volumeMounts: [{name: scratch, mountPath: scratch}]",
            "f.yaml:9: {place}.volumeMounts[0].mountPath: 'scratch' is not an absolute path;"
            " write a path starting with /",
        ),
        (
            "tolerations: [{key: gpu, operator: Exists, value: 'yes'}]",
            "f.yaml:9: {place}.tolerations[0]: operator Exists matches any value, so value"
            " 'yes' is not accepted; remove the value, or use operator Equal",
        ),
        (
            "tolerations: [{key: gpu, effect: NoRun}]",
            "f.yaml:9: {place}.tolerations[0].effect: expected one of 'NoSchedule',"
            " 'PreferNoSchedule' or 'NoExecute', got 'NoRun'",
        ),
        (
            "labels: {team: 'a b'}",
            "f.yaml:9: {place}.labels: team: 'a b' is not a label value; write at most 63"
            " letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
        ),
        (
            "annotations: {'-bad': x}",
            "f.yaml:9: {place}.annotations: '-bad' is not a label or annotation name; write"
            " an optional DNS prefix and '/', then letters, digits, '-', '_' and '.', such"
            " as example.com/team",
        ),
        (
            "podTemplate: {containers: []}",
            "f.yaml:9: {place}.podTemplate: containers: a Pod template patch holds metadata"
            " and spec mappings only, such as {spec: {priorityClassName: batch}}",
        ),
        (
            "ttlSecondsAfterFinished: -1",
            "f.yaml:9: {place}.ttlSecondsAfterFinished: expected a number >= 0, got -1",
        ),
        (
            "securityContext: {runAsUser: -1}",
            "f.yaml:9: {place}.securityContext.runAsUser: expected a number >= 0, got -1",
        ),
        (
            "containerSecurityContext: {readOnlyRootFilesystem: sure}",
            "f.yaml:9: {place}.containerSecurityContext.readOnlyRootFilesystem: expected a"
            " boolean (true or false), got 'sure'",
        ),
    ],
)
def test_bad_block_is_refused_with_its_field_path(
    tmp_path: Path, written: str, expected: str
) -> None:
    """Each mistake is one problem at file:line, naming the field, the value and the fix."""
    assert problems(tmp_path, written) == [expected.replace("{place}", PLACE)]


def test_workflow_block_errors_name_the_spec_path(tmp_path: Path) -> None:
    """A mistake in the workflow-wide block is reported at spec.kubernetes."""
    path = tmp_path / "f.yaml"
    text = (WORKFLOW % "          {}").replace(
        "spec:\n", "spec:\n  kubernetes: {resources: {limits: {memory: lots}}}\n"
    )
    path.write_text(text)
    assert [str(p).removeprefix(f"{tmp_path}/") for p in load_documents([path])[1]] == [
        "f.yaml:5: WorkflowTemplate/w: spec.kubernetes.resources.limits.memory: 'lots' is not"
        " a Kubernetes quantity; write a number with an optional suffix, such as 500m or 2"
        " (CPU) and 512Mi or 1Gi (memory)"
    ]


def test_full_block_loads(tmp_path: Path) -> None:
    """Every field written correctly loads without a problem."""
    path = tmp_path / "f.yaml"
    path.write_text(WORKFLOW % textwrap.indent(FULL_STEP_BLOCK, " " * 8))
    located, found = load_documents([path])
    assert found == []
    assert len(located) == 1


# --- merging ----------------------------------------------------------------------------


def test_layer_holds_only_what_was_written() -> None:
    """A block's layer has the fields set, in YAML names, nested unset ones left out."""
    assert block(serviceAccountName="runner", resources={"limits": {"cpu": "1"}}) == {
        "serviceAccountName": "runner",
        "resources": {"limits": {"cpu": "1"}},
    }
    assert layers(None, KubernetesOptions()) == ()


def test_later_layer_wins_for_scalars_and_lists() -> None:
    """The step's service account and tolerations replace the installation's."""
    installation = block(
        serviceAccountName="default-sa",
        tolerations=[{"key": "a", "operator": "Exists"}],
        ttlSecondsAfterFinished=600,
    )
    step = block(serviceAccountName="etl", tolerations=[{"key": "b", "operator": "Exists"}])
    assert merge_options(installation, step) == {
        "serviceAccountName": "etl",
        "tolerations": [{"key": "b", "operator": "Exists"}],
        "ttlSecondsAfterFinished": 600,
    }


def test_maps_merge_key_by_key_through_the_three_layers() -> None:
    """Requests, limits, node selector and labels combine across installation, workflow, step."""
    installation = block(
        resources={"requests": {"cpu": "100m", "memory": "128Mi"}},
        nodeSelector={"pool": "general", "zone": "a"},
        labels={"team": "data"},
    )
    workflow = block(resources={"limits": {"memory": "1Gi"}}, nodeSelector={"pool": "batch"})
    step = block(resources={"requests": {"cpu": "500m"}}, labels={"tier": "gold"})
    assert merge_options(installation, workflow, step) == {
        "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"pool": "batch", "zone": "a"},
        "labels": {"team": "data", "tier": "gold"},
    }


def test_null_field_inherits_from_the_earlier_layer() -> None:
    """`serviceAccountName: null` on the step sets nothing: the installation's stays."""
    installation = layers(KubernetesOptions(serviceAccountName="default-sa"))
    step = layers(KubernetesOptions.model_validate({"serviceAccountName": None}))
    assert step == ()
    assert merge_options(*installation, *step) == {"serviceAccountName": "default-sa"}


def test_empty_list_clears_the_earlier_layers_list() -> None:
    """`tolerations: []` on the step replaces the installation's tolerations with none."""
    installation = block(tolerations=[{"key": "a", "operator": "Exists"}])
    assert merge_options(installation, block(tolerations=[])) == {"tolerations": []}


def test_stored_and_reloaded_spec_gives_the_same_layers() -> None:
    """A run's spec is stored with every field (nulls too); read back, its layers are equal."""
    spec = spec_with_step_block()
    stored = WorkflowSpec.model_validate(spec.model_dump(mode="json", by_alias=True))
    step, again = spec.steps[0], stored.steps[0]
    assert stored.kubernetes_layers(again) == spec.kubernetes_layers(step)
    assert len(spec.kubernetes_layers(step)) == 2


def test_pod_template_patches_are_kept_in_layer_order() -> None:
    """Each layer's podTemplate is kept whole, installation's first, to be applied in turn."""
    first = {"spec": {"containers": [{"name": "step", "stdin": False}]}}
    second = {"spec": {"priorityClassName": "batch"}}
    merged = merge_options(block(podTemplate=first), {}, block(podTemplate=second))
    assert merged == {"podTemplate": [first, second]}


def test_merging_changes_no_layer() -> None:
    """The layers given are left as they were."""
    installation = block(resources={"requests": {"cpu": "1"}}, podTemplate={"spec": {}})
    step = block(resources={"requests": {"memory": "1Gi"}})
    before = copy.deepcopy((installation, step))
    merge_options(installation, step)
    assert (installation, step) == before


def test_no_layers_merge_to_nothing() -> None:
    """No block anywhere gives an empty block."""
    assert merge_options() == {}
    assert merge_options({}, {}) == {}


# --- from the block to JobOptions -------------------------------------------------------


def test_block_fields_land_on_job_options() -> None:
    """Every block field maps onto its JobOptions field; env references become valueFrom."""
    merged = block(
        serviceAccountName="etl",
        resources={"limits": {"cpu": "1"}},
        nodeSelector={"pool": "batch"},
        tolerations=[{"key": "batch", "operator": "Exists"}],
        affinity={"nodeAffinity": {"x": 1}},
        volumes=[{"name": "data", "emptyDir": {}}],
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
        imagePullSecrets=["registry"],
        securityContext={"runAsNonRoot": True},
        containerSecurityContext={"privileged": False},
        envFrom=[{"secretRef": {"name": "db"}}],
        envRefs={
            "PW": {"secret": "db", "key": "password"},
            "LEVEL": {"configMap": "settings", "key": "level", "optional": True},
        },
        ttlSecondsAfterFinished=60,
        labels={"team": "data"},
        annotations={"note": "x"},
        podTemplate={"spec": {"priorityClassName": "batch"}},
    )
    assert job_options(BASE, merge_options(merged)) == JobOptions(
        namespace="eventflow",
        service_account="etl",
        resources={"limits": {"cpu": "1"}},
        node_selector={"pool": "batch"},
        tolerations=[{"key": "batch", "operator": "Exists"}],
        affinity={"nodeAffinity": {"x": 1}},
        volumes=[{"name": "data", "emptyDir": {}}],
        volume_mounts=[{"name": "data", "mountPath": "/data"}],
        image_pull_secrets=("registry",),
        security_context={"runAsNonRoot": True},
        container_security_context={"privileged": False},
        env_from=[{"secretRef": {"name": "db"}}],
        env_refs={
            "PW": {"secretKeyRef": {"name": "db", "key": "password"}},
            "LEVEL": {"configMapKeyRef": {"name": "settings", "key": "level", "optional": True}},
        },
        ttl_seconds_after_finished=60,
        labels={"team": "data"},
        annotations={"note": "x"},
        pod_template_patches=({"spec": {"priorityClassName": "batch"}},),
    )


def test_empty_block_keeps_the_executor_options() -> None:
    """A step with no block anywhere gets the executor's own options unchanged."""
    assert job_options(BASE, merge_options()) == BASE


# --- the Job a merged block makes -------------------------------------------------------

FULL_STEP_BLOCK = """\
serviceAccountName: etl
resources:
  requests: {cpu: 500m}
  limits: {memory: 1Gi, cpu: 1}
nodeSelector: {pool: batch}
tolerations: [{key: batch, operator: Equal, value: "yes", effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: disk, operator: In, values: [ssd]}]}]
volumes: [{name: cache, persistentVolumeClaim: {claimName: etl-cache}}]
volumeMounts: [{name: cache, mountPath: /cache, readOnly: true}]
imagePullSecrets: [registry]
securityContext: {runAsNonRoot: true, runAsUser: 1000, fsGroup: 2000,
                  seccompProfile: {type: RuntimeDefault}}
containerSecurityContext:
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: {drop: [ALL]}
envFrom: [{configMapRef: {name: etl-settings}, prefix: ETL_}]
envRefs:
  DB_PASSWORD: {secret: db, key: password}
ttlSecondsAfterFinished: 120
labels: {tier: gold}
annotations: {cluster-autoscaler.kubernetes.io/safe-to-evict: "false"}
podTemplate:
  spec:
    priorityClassName: batch
    containers: [{name: step, stdin: false}]
"""

LAYERED_WORKFLOW = {
    "kubernetes": {
        "serviceAccountName": "workflow-sa",
        "nodeSelector": {"zone": "eu-1"},
        "labels": {"team": "data"},
    },
    "steps": [{"name": "extract", "image": "etl:1", "command": ["extract"]}],
}


def spec_with_step_block() -> WorkflowSpec:
    data = copy.deepcopy(LAYERED_WORKFLOW)
    data["steps"][0]["kubernetes"] = yaml.safe_load(FULL_STEP_BLOCK)
    return WorkflowSpec.model_validate(data)


def rendered_job(installation: KubernetesOptions) -> dict[str, Any]:
    """The Job of step `extract` of the layered workflow, through planning and manifests."""
    workflow = CompiledWorkflow.compile(spec_with_step_block())
    rendered = render_step(workflow, "extract", workflow.context({}, {}, {}))
    step = StepSpec(KEY, rendered.command, image=rendered.image, kubernetes=rendered.kubernetes)
    merged = merge_options(*layers(installation), *step.kubernetes)
    return build_job(step, job_options(BASE, merged))


INSTALLATION = KubernetesOptions.model_validate(
    {
        "resources": {"requests": {"memory": "256Mi"}},
        "labels": {"owner": "platform"},
        "podTemplate": {"spec": {"containers": [{"name": "step", "tty": False}]}},
    }
)


def test_render_step_carries_the_workflow_and_step_blocks() -> None:
    """render_step hands over the workflow's block, then the step's, as written."""
    workflow = CompiledWorkflow.compile(spec_with_step_block())
    rendered = render_step(workflow, "extract", workflow.context({}, {}, {}))
    assert len(rendered.kubernetes) == 2
    assert rendered.kubernetes[0] == LAYERED_WORKFLOW["kubernetes"]
    assert rendered.kubernetes[1]["serviceAccountName"] == "etl"


def test_step_without_blocks_carries_none() -> None:
    """A workflow and step with no block give no layers."""
    workflow = CompiledWorkflow.compile(
        WorkflowSpec.model_validate({"steps": [{"name": "a", "command": ["x"]}]})
    )
    assert render_step(workflow, "a", workflow.context({}, {}, {})).kubernetes == ()


LABELS = {
    "app.kubernetes.io/managed-by": "eventflow",
    "eventflow.io/attempt": "1",
    "eventflow.io/run": "0190a1b2c3d4e5f60",
    "eventflow.io/step": "extract",
}
EXPECTED_POD_LABELS = {"owner": "platform", "team": "data", "tier": "gold"} | LABELS


def test_three_layers_make_this_job() -> None:
    """Installation, workflow and step blocks merge into exactly this Job."""
    job = rendered_job(INSTALLATION)
    assert job["metadata"]["labels"] == EXPECTED_POD_LABELS
    assert job["metadata"]["annotations"] == {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
        "eventflow.io/step-key": '["0190a1b2c3d4e5f60", "extract", 1]',
    }
    assert job["spec"]["ttlSecondsAfterFinished"] == 120
    assert job["spec"]["template"] == {
        "metadata": {
            "labels": EXPECTED_POD_LABELS,
            "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "step",
                    "image": "etl:1",
                    "env": [
                        {
                            "name": "DB_PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}},
                        },
                        {"name": "EVENTFLOW_ATTEMPT", "value": "1"},
                        {"name": "EVENTFLOW_OUTPUT_FILE", "value": "/dev/termination-log"},
                        {"name": "EVENTFLOW_RUN_ID", "value": "0190a1b2c3d4e5f60"},
                        {"name": "EVENTFLOW_STEP", "value": "extract"},
                    ],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "command": ["extract"],
                    "resources": {
                        "requests": {"memory": "256Mi", "cpu": "500m"},
                        "limits": {"memory": "1Gi", "cpu": "1"},
                    },
                    "volumeMounts": [{"name": "cache", "mountPath": "/cache", "readOnly": True}],
                    "envFrom": [{"prefix": "ETL_", "configMapRef": {"name": "etl-settings"}}],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "tty": False,
                    "stdin": False,
                }
            ],
            "serviceAccountName": "etl",
            "nodeSelector": {"zone": "eu-1", "pool": "batch"},
            "tolerations": [
                {"key": "batch", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "disk", "operator": "In", "values": ["ssd"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "etl-cache"}}],
            "imagePullSecrets": [{"name": "registry"}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "fsGroup": 2000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "priorityClassName": "batch",
        },
    }


def test_every_field_of_the_layered_job_is_a_real_batch_v1_field() -> None:
    """The Job the full block makes has no field the Kubernetes OpenAPI lacks."""
    assert unknown_fields(rendered_job(INSTALLATION), "V1Job", "job") == []


def test_eventflow_labels_win_over_the_users() -> None:
    """A user label with eventflow's key cannot move the Job out of the watch's selector."""
    merged = merge_options(block(labels={"eventflow.io/step": "other", "team": "x"}))
    job = build_job(StepSpec(KEY, ["x"], image="i"), job_options(BASE, merged))
    assert job["metadata"]["labels"]["eventflow.io/step"] == "extract"
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "x"


def test_later_patch_applies_over_the_earlier() -> None:
    """The step's patch sees the installation's: it may delete the sidecar that one added."""
    sidecar = {"spec": {"containers": [{"name": "proxy", "image": "envoy"}]}}
    remove = {"spec": {"containers": [{"name": "proxy", "$patch": "delete"}]}}
    merged = merge_options(block(podTemplate=sidecar), block(podTemplate=remove))
    job = build_job(StepSpec(KEY, ["x"], image="i"), job_options(BASE, merged))
    assert [c["name"] for c in job["spec"]["template"]["spec"]["containers"]] == ["step"]


def test_bad_second_patch_names_its_place() -> None:
    """A directive error in a later patch says which patch it is in."""
    merged = merge_options(
        block(podTemplate={"spec": {}}), block(podTemplate={"spec": {"$patch": "merge"}})
    )
    with pytest.raises(ConfigError) as caught:
        build_job(StepSpec(KEY, ["x"], image="i"), job_options(BASE, merged))
    assert str(caught.value) == (
        "kubernetes.podTemplate (patch 2).spec.$patch: 'merge' is not a directive eventflow"
        " knows; write delete or replace, or leave $patch out to merge"
    )


# --- installation defaults in settings --------------------------------------------------


def test_installation_defaults_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EVENTFLOW_EXECUTOR__KUBERNETES__DEFAULTS holds the block as JSON."""
    monkeypatch.setenv(
        "EVENTFLOW_EXECUTOR__KUBERNETES__DEFAULTS",
        '{"serviceAccountName": "steps", "resources": {"requests": {"cpu": "100m"}}}',
    )
    defaults = Settings().executor.kubernetes.defaults
    assert layers(defaults) == (
        {"serviceAccountName": "steps", "resources": {"requests": {"cpu": "100m"}}},
    )


def test_installation_defaults_default_to_nothing() -> None:
    """With no defaults configured, the installation's layer is empty."""
    assert layers(Settings().executor.kubernetes.defaults) == ()


def test_bad_installation_defaults_are_refused() -> None:
    """A bad quantity in the installation's defaults fails the settings, naming the value."""
    with pytest.raises(ValidationError, match="'lots' is not a Kubernetes quantity"):
        Settings.model_validate(
            {"executor": {"kubernetes": {"defaults": {"resources": {"limits": {"cpu": "lots"}}}}}}
        )
