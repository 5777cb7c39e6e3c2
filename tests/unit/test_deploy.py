"""deploy/: every kustomization renders with `kubectl kustomize`, and what it renders holds
together: names that refer to each other exist, probes, least privilege, a non-root
read-only container, and the example resources in the ConfigMap load."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventflow.resources.validation import load_resources
from eventflow.sensing.discovery import discover_plugins
from eventflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = ["base", "overlays/kubernetes-jobs", "overlays/distributed"]

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not installed: these tests render deploy/ with `kubectl kustomize`",
)


@functools.cache
def rendered(kustomization: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    [found] = [doc for doc in docs if doc["kind"] == kind]
    return found


def names(docs: tuple[dict[str, Any], ...], kind: str) -> set[str]:
    return {doc["metadata"]["name"] for doc in docs if doc["kind"] == kind}


def env_of(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container["env"]}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_is_in_the_eventflow_namespace(kustomization: str) -> None:
    """Each rendered object but the Namespace itself lives in namespace eventflow."""
    docs = rendered(kustomization)
    assert names(docs, "Namespace") == {"eventflow"}
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {
        "eventflow"
    }


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_names_that_refer_to_each_other_exist(kustomization: str) -> None:
    """Service account, role, ConfigMap volume and Service selector all find their target."""
    docs = rendered(kustomization)
    pod = one(docs, "Deployment")["spec"]["template"]
    binding = one(docs, "RoleBinding")
    assert pod["spec"]["serviceAccountName"] in names(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] in names(docs, "Role")
    assert {subject["name"] for subject in binding["subjects"]} <= names(docs, "ServiceAccount")
    config_maps = [v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v]
    assert config_maps
    assert set(config_maps) <= names(docs, "ConfigMap")
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_container_is_probed_non_root_and_read_only(kustomization: str) -> None:
    """Readiness on /readyz, liveness on /healthz; non-root, read-only root, no escalation."""
    pod = one(rendered(kustomization), "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]


def test_role_grants_only_what_the_kubernetes_executor_uses() -> None:
    """Jobs: create/get/list/watch/delete; Pods and their logs: get/list/watch; nothing else."""
    role = one(rendered("overlays/kubernetes-jobs"), "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
    ]


def test_config_map_holds_example_resources_that_load(tmp_path: Path) -> None:
    """The generated ConfigMap holds examples/kubernetes, and those resources load clean."""
    config_map = one(rendered("base"), "ConfigMap")
    assert config_map["metadata"]["name"].startswith("eventflow-resources-")
    assert set(config_map["data"]) == {"resources.yaml"}
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    resources = load_resources([tmp_path], discover_plugins())
    assert (list(resources.sensors), list(resources.triggers), list(resources.workflows)) == (
        ["uploads"],
        ["etl-on-upload"],
        ["etl"],
    )


def test_kubernetes_jobs_overlay_gives_settings_that_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overlay's environment selects Jobs in namespace eventflow with valid defaults."""
    env = env_of(rendered("overlays/kubernetes-jobs"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    executor = Settings().executor
    assert (executor.kind, executor.kubernetes.namespace) == ("kubernetes", "eventflow")
    assert executor.kubernetes.defaults.model_dump(mode="json", exclude_none=True) == {
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
        "podTemplate": {"spec": {"automountServiceAccountToken": False}},
    }


def test_distributed_overlay_uses_nats_postgres_and_jobs() -> None:
    """Bus on NATS, store URL from the eventflow-store Secret, steps as Jobs; two replicas,
    each named after its Pod in the leases, replaced one at a time."""
    docs = rendered("overlays/distributed")
    env = env_of(docs)
    assert env["EVENTFLOW_BUS__URL"] == "nats://nats:4222"
    assert env["EVENTFLOW_STORE__URL"] == {
        "secretKeyRef": {"name": "eventflow-store", "key": "url"}
    }
    assert env["EVENTFLOW_EXECUTOR__KIND"] == "kubernetes"
    assert env["EVENTFLOW_REPLICA__ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    deployment = one(docs, "Deployment")["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_base_keeps_one_replica_on_its_sqlite_volume() -> None:
    """SQLite is one Pod's file: one replica, and the old Pod goes before the new one starts."""
    for kustomization in ("base", "overlays/kubernetes-jobs"):
        deployment = one(rendered(kustomization), "Deployment")["spec"]
        assert (deployment["replicas"], deployment["strategy"]) == (1, {"type": "Recreate"})
