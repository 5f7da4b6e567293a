"""deploy/ray/rayjob.yaml validates against KubeRay's RayJob CRD (v1.7.0, vendored) as `kubectl apply` checks it,
offline; broken copies are refused; and the manifest keeps docs/DEPLOY.md's promises: its entrypoint is a valid
deploy/ray/score.py command on the mounted volume, its pods pass the namespace's restricted policy, and its Ray
version is the one fitgate pins."""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "ray" / "rayjob.yaml"
SCHEMA = Path(__file__).parent / "schemas" / "rayjob-v1.yaml"  # its header says where it was cut from
MAX_RAYJOB_NAME = 47  # KubeRay v1.7.0 utils/constant.go MaxRayJobNameLength: 53 - len("-xxxxx") of its cluster


def strict(node: dict[str, Any]) -> dict[str, Any]:
    """The schema as `kubectl apply` (--validate=strict, its default) applies it: a field the schema does not
    know is an error. The API server alone drops it with a warning, and a misspelt setting never applies."""
    out = dict(node)
    if "properties" in node:
        out["properties"] = {name: strict(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = strict(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [strict(sub) for sub in node[key]]
    return out


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return loaded


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    # OpenAPI 3.0's schema objects are JSON Schema draft 4 with extensions (x-kubernetes-*, nullable) it ignores
    return jsonschema.Draft4Validator(strict(schema))


@pytest.fixture
def rayjob() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return loaded


def errors(validator: jsonschema.Draft4Validator, manifest: dict[str, Any]) -> list[str]:
    return ["/".join(map(str, e.absolute_path)) + ": " + e.message for e in validator.iter_errors(manifest)]


def cel_guarded(schema: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Field paths whose schema carries CEL rules (x-kubernetes-validations), which jsonschema cannot evaluate."""
    found = [path] if "x-kubernetes-validations" in schema else []
    for name, sub in schema.get("properties", {}).items():
        found += cel_guarded(sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        found += cel_guarded(schema["items"], (*path, "*"))
    return found


def present(doc: Any, path: tuple[str, ...]) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "*":
        return isinstance(doc, list) and any(present(item, rest) for item in doc)
    return isinstance(doc, dict) and head in doc and present(doc[head], rest)


def pods(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pod template the RayJob makes: the submitter, the head, each worker group."""
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    return {
        "submitter": spec["submitterPodTemplate"],
        "head": cluster["headGroupSpec"]["template"],
        **{group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]},
    }


def test_the_manifest_validates_strictly_against_the_rayjob_crd(
    rayjob: dict[str, Any], validator: jsonschema.Draft4Validator, schema: dict[str, Any]
) -> None:
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert errors(validator, rayjob) == []
    # what the schema leaves to the API server and the operator, checked here as they check it
    assert not [p for p in cel_guarded(schema) if present(rayjob, p)], "a field with CEL rules: check them by hand"
    name = rayjob["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= MAX_RAYJOB_NAME  # DNS-1035 label


DROP = object()  # as a new value: remove the field


def changed(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the field at ``path`` (``a/b/0/c``) set to ``value``, or removed."""
    broken = copy.deepcopy(doc)
    *parents, last = path.split("/")
    node: Any = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DROP:
        del node[last]
    else:
        node[last] = value
    return broken


HEAD = "spec/rayClusterSpec/headGroupSpec"
WORKERS = "spec/rayClusterSpec/workerGroupSpecs/0"


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        ("spec/shutdownAfterJobFinish", True, "Additional properties are not allowed"),  # misspelt
        (f"{WORKERS}/replicas", "two", "'two' is not of type 'integer'"),
        (f"{WORKERS}/groupName", DROP, "'groupName' is a required property"),
        (f"{HEAD}/template/spec/containers/0/name", DROP, "'name' is a required property"),
        (f"{HEAD}/rayStartParams/num-cpus", 0, "0 is not of type 'string'"),  # Ray's flags are strings
        ("spec/rayClusterSpec/upgradeStrategy", {"type": "Rolling"}, "'Rolling' is not one of"),
    ],
    ids=["unknown-field", "wrong-type", "missing-group-name", "missing-container-name", "number-flag", "enum"],
)
def test_a_broken_copy_is_refused_with_the_field_named(
    rayjob: dict[str, Any], validator: jsonschema.Draft4Validator, path: str, value: Any, error: str
) -> None:
    found = errors(validator, changed(rayjob, path, value))
    assert len(found) == 1 and error in found[0], found


def load_score_script() -> ModuleType:
    """deploy/ray/score.py as a module (it is a script, in no package)."""
    spec = importlib.util.spec_from_file_location("fitgate_ray_score", REPO / "deploy" / "ray" / "score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its arguments import no Ray: this test runs without the ray extra
    return module


def test_the_entrypoint_is_a_score_command_on_the_volume_every_pod_mounts(rayjob: dict[str, Any]) -> None:
    python, script, *args = shlex.split(rayjob["spec"]["entrypoint"])
    assert (python, script) == ("python", "deploy/ray/score.py")
    ns = load_score_script().parser().parse_args(args)  # exits (SystemExit) on an argument score.py lacks
    assert ns.model and ns.id_column
    for role in ("head", "scorers"):  # the driver reads and resolves on the head; actors read and write on workers
        pod = pods(rayjob)[role]["spec"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert claims == {"data": "fitgate-data"} and mounts["data"] == "/data"
        assert ns.source.is_relative_to("/data") and ns.out.is_relative_to("/data")
    (head,) = pods(rayjob)["head"]["spec"]["containers"]
    assert {"configMapRef": {"name": "fitgate-config"}} in head["envFrom"]  # the registry --model is read from


def test_every_pod_passes_the_restricted_policy_and_stays_off_the_fitgate_network_policy(
    rayjob: dict[str, Any],
) -> None:
    policy = yaml.safe_load((REPO / "deploy" / "k8s" / "base" / "networkpolicy.yaml").read_text())
    selected = policy["spec"]["podSelector"]["matchLabels"].items()
    images = set()
    for role, template in pods(rayjob).items():
        labels = template["metadata"]["labels"]
        assert not selected <= labels.items(), f"{role}: the fitgate NetworkPolicy would allow it DNS only"
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, role
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, role
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], role
            assert sc["readOnlyRootFilesystem"] is True, role
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, role  # Ray's session files
            images.add(container["image"])
    assert len(images) == 1  # one image: Ray refuses nodes whose Ray or Python versions differ


def ray_pin() -> str:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [str(d) for d in extras["ray"] if d.startswith("ray[")]
    return pin.split("==")[1]


def test_the_cluster_runs_the_ray_version_fitgate_pins(rayjob: dict[str, Any]) -> None:
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == ray_pin()
    docs = (REPO / "docs" / "DEPLOY.md").read_text()
    assert set(re.findall(r'"ray\[default,data\]==([0-9.]+)"', docs)) == {ray_pin()}  # the image recipe's install
