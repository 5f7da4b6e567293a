"""deploy/k8s: every overlay renders with kustomize and validates against the Kubernetes schemas, offline;
the objects say what docs/DEPLOY.md promises (roles, probes, volumes, GPU, security, several trainers)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu", "scale")
GPU_OVERLAYS = {"gpu", "scale"}
SCALE = REPO / "deploy" / "k8s" / "overlays" / "scale"
KUBERNETES_VERSION = "1.37.0"
CRDS = {"ServiceMonitor", "PrometheusRule"}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "CI's machine image has it; it renders the overlays with kustomize")
    out = subprocess.run(
        [kubectl, "kustomize", str(REPO / "deploy" / "k8s" / "overlays" / overlay)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment values (not those read from a Secret)."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_every_builtin_object_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for obj in objects:
        if obj["kind"] not in CRDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on any schema error
    assert {o["kind"] for o in objects} >= {
        "Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "PrometheusRule",
    }  # fmt: skip
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"fitgate"}


def test_monitoring_crds_have_their_required_fields_and_the_repo_rules(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    monitor = one(objects, "ServiceMonitor", "fitgate")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "fitgate"}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
    services = [o for o in objects if o["kind"] == "Service"]
    assert all(o["metadata"]["labels"]["app.kubernetes.io/name"] == "fitgate" for o in services)
    assert all("http" in {p["name"] for p in o["spec"]["ports"]} for o in services)
    rule = one(objects, "PrometheusRule", "fitgate")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"] and all(r["alert"] and r["expr"] for r in group["rules"])
    assert (
        rule["spec"]["groups"] == yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    )


def test_inference_scales_out_with_probes_and_never_trains(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    inference = one(objects, "Deployment", "fitgate-inference")
    assert inference["spec"]["replicas"] >= 2
    assert env_of(inference)["FITGATE_TRAINING_ENABLED"] == "false"
    (container,) = inference["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 120
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])
    hpa = one(objects, "HorizontalPodAutoscaler", "fitgate-inference")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fitgate-inference" and hpa["spec"]["minReplicas"] >= 2
    pdb = one(objects, "PodDisruptionBudget", "fitgate-inference")
    assert pdb["spec"]["selector"]["matchLabels"] == inference["spec"]["selector"]["matchLabels"]
    service = one(objects, "Service", "fitgate")
    assert (
        service["spec"]["selector"] == inference["spec"]["template"]["metadata"]["labels"] | service["spec"]["selector"]
    )


def test_trainers_train_and_the_gpu_overlays_give_each_a_gpu(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    trainer = one(objects, "Deployment", "fitgate-trainer")
    assert env_of(trainer)["FITGATE_TRAINING_ENABLED"] == "true"
    pod = trainer["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    limits = resources["limits"]
    if overlay in GPU_OVERLAYS:
        assert resources["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == 1
        assert env_of(trainer)["FITGATE_MAX_RUNNING_JOBS"] == "1"  # one job per GPU
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["containers"][0]["image"].endswith("-gpu")
        assert "FITGATE_TRAINING_MEMORY_MB" not in env_of(trainer)  # CUDA maps far more than it uses
    else:
        assert "nvidia.com/gpu" not in limits and pod["containers"][0]["image"].endswith("-cpu")
        assert limits["memory"].endswith("Gi")  # a run that outgrows the pod fails its job, not the server
        assert int(env_of(trainer)["FITGATE_TRAINING_MEMORY_MB"]) < int(limits["memory"][:-2]) * 1024


def test_one_trainer_on_sqlite_several_on_postgresql(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    trainer = one(objects, "Deployment", "fitgate-trainer")
    containers = [c for o in objects if o["kind"] == "Deployment" for c in o["spec"]["template"]["spec"]["containers"]]
    on_postgresql = ["FITGATE_DATABASE_URL" in {e["name"] for e in c.get("env", [])} for c in containers]
    if overlay == "scale":  # the secret it comes from: test_scale_reads_the_database_url_from_a_secret...
        assert all(on_postgresql)
        assert trainer["spec"]["replicas"] > 1 and trainer["spec"]["strategy"]["type"] != "Recreate"
    else:  # the queue and the registry are SQLite files on the volume: one trainer, never two at once
        assert not any(on_postgresql)
        assert trainer["spec"]["replicas"] == 1 and trainer["spec"]["strategy"]["type"] == "Recreate"


def test_both_roles_share_one_read_write_many_volume(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    pvc = one(objects, "PersistentVolumeClaim", "fitgate-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("fitgate-inference", "fitgate-trainer"):
        pod = one(objects, "Deployment", name)["spec"]["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert claims == {"data": "fitgate-data"} and mounts["data"] == "/data"


def test_pods_run_locked_down(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}  # the writable scratch space
    policy = one(objects, "NetworkPolicy", "fitgate")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_the_token_secret_ships_placeholders_only(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    secret = one(objects, "Secret", "fitgate-tokens")
    import json

    entries = json.loads(secret["stringData"]["tokens.json"])
    assert entries and all(e["sha256"].startswith("REPLACE-WITH-") for e in entries)


# --- overlays/scale: several trainers on one PostgreSQL queue ---------------------------------------


@pytest.fixture(scope="module")
def scale() -> list[dict[str, Any]]:
    return render("scale")


def test_scale_reads_the_database_url_from_a_secret_it_never_overwrites(scale: list[dict[str, Any]]) -> None:
    containers = [c for o in scale if o["kind"] == "Deployment" for c in o["spec"]["template"]["spec"]["containers"]]
    assert {c["name"] for c in containers} == {"fitgate"} and len(containers) == 2  # trainers and inference
    for container in containers:
        (entry,) = [e for e in container["env"] if e["name"] == "FITGATE_DATABASE_URL"]
        assert entry == {  # no URL (nor password) in the manifest
            "name": "FITGATE_DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "fitgate-database", "key": "url"}},
        }
    assert not [o for o in scale if o["kind"] == "Secret" and o["metadata"]["name"] == "fitgate-database"]
    example = yaml.safe_load((SCALE / "database-secret.example.yaml").read_text())
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    assert (example["metadata"]["name"], list(example["stringData"])) == ("fitgate-database", ["url"])
    assert example["stringData"]["url"].startswith("postgresql://") and "REPLACE-WITH-" in example["stringData"]["url"]


def test_scale_trainers_roll_one_at_a_time_without_a_spare_gpu(scale: list[dict[str, Any]]) -> None:
    trainer = one(scale, "Deployment", "fitgate-trainer")
    assert trainer["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    lease = float(env_of(trainer)["FITGATE_LEASE_SECONDS"])
    # renewals come every quarter lease: a stopping pod is gone before its lease can lapse and be taken over
    assert trainer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] < lease * 3 / 4
    pdb = one(scale, "PodDisruptionBudget", "fitgate-trainer")
    assert pdb["spec"]["selector"]["matchLabels"] == trainer["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_scale_egress_adds_postgresql_and_nothing_else(scale: list[dict[str, Any]]) -> None:
    policies = [o for o in scale if o["kind"] == "NetworkPolicy"]
    assert all(p["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "fitgate"} for p in policies)
    ports = {
        (port["protocol"], port["port"]) for p in policies for rule in p["spec"]["egress"] for port in rule["ports"]
    }
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 5432)}


def test_the_trainer_autoscaling_example_targets_the_trainers_on_exported_metrics(scale: list[dict[str, Any]]) -> None:
    scaled = yaml.safe_load((SCALE / "trainer-autoscaling.example.yaml").read_text())
    assert "ScaledObject" not in {o["kind"] for o in scale}  # KEDA is optional: the overlay does not need it
    trainer = one(scale, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert scaled["metadata"]["namespace"] == trainer["metadata"]["namespace"]
    (trigger,) = scaled["spec"]["triggers"]
    queried = set(re.findall(r"fitgate_[a-z_]+", trigger["metadata"]["query"]))
    exported = set(re.findall(r'"(fitgate_[a-z_]+)"', (REPO / "service" / "monitoring.py").read_text()))
    assert queried == {"fitgate_jobs_queued", "fitgate_jobs_running"} and queried <= exported
