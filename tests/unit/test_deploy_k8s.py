"""Kubernetes manifests (deploy/k8s) and the Prometheus alert rules (deploy/prometheus/alerts.yml).

No cluster runs here, so what can be proved is proved from the files: every object against the
Kubernetes OpenAPI schemas of a current release (kubernetes-validate, strict: an unknown field is an
error), every custom resource against its CRD's own openAPIV3Schema (vendored in deploy/schemas/crds,
unknown fields rejected too), and the rules the design depends on (Triton's model delivery and GPU
placement, probes on the worker's /livez and /readyz, KEDA owning the worker count, NetworkPolicies
that allow exactly what each component's URLs say it talks to, alert rules that name real metrics).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from steelcore.paths import REPO_ROOT
from steelcore.settings import Settings

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
MONITORING = K8S / "monitoring"
CRDS = DEPLOY / "schemas" / "crds"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
KUBERNETES_VERSION = "1.37"
# Custom resources whose CRD is too large to carry into deploy/schemas/crds (deploy/schemas/README.md):
# checked against Kubernetes' ObjectMeta and by the structural tests in this file and
# test_deploy_manifests.py instead.
NOT_VENDORED = {("kafka.strimzi.io/v1beta2", "Kafka"), ("kafka.strimzi.io/v1beta2", "KafkaNodePool")}


# --- loading --------------------------------------------------------------------------------------


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _load_kustomization(folder: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs.extend(_docs(folder / name))
    return docs


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return _load_kustomization(K8S)


@pytest.fixture(scope="module")
def monitoring() -> list[dict[str, Any]]:
    return _load_kustomization(MONITORING)


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return spec["template"]["spec"]
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return None


def _pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return doc["spec"]["template"]["metadata"]["labels"]


def _workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        pod = _pod(doc)
        if pod is not None:
            yield doc, pod


def _container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (container,) = _pod(_one(docs, kind, name))["containers"]
    return container


# --- schemas: Kubernetes OpenAPI and the CRDs -----------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema that rejects unknown fields, as the API server's strict
    field validation does (`kubectl apply --validate=strict`)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON Schema, from every vendored CRD."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        (crd,) = _docs(path)
        assert crd["kind"] == "CustomResourceDefinition", path
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _object_meta_validator() -> jsonschema.protocols.Validator:
    """Kubernetes' ObjectMeta (strict) from kubernetes-validate's bundled definitions: a custom
    resource's metadata is ordinary object metadata, which its CRD leaves as `type: object`."""
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = root / f"v{KUBERNETES_VERSION}.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
    schema = {
        "$ref": "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _schema_errors(doc: dict[str, Any], crds: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Why the object does not validate (empty when it does)."""
    key = (doc["apiVersion"], doc["kind"])
    where = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
    if key in crds or key in NOT_VENDORED:
        errors = [
            f"{where} metadata: {e.message}" for e in _object_meta_validator().iter_errors(doc["metadata"])
        ]
        if key in crds:
            validator = jsonschema.Draft202012Validator(crds[key])
            errors += [f"{where} {list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        return errors
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where} {list(e.path)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{where}: {e.message} (vendor its CRD into deploy/schemas/crds)"]
    return []


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    return _crd_schemas()


def test_every_manifest_validates_against_kubernetes_and_crd_schemas(
    k8s: list[dict[str, Any]], monitoring: list[dict[str, Any]], crds: dict[tuple[str, str], dict[str, Any]]
) -> None:
    errors = [error for doc in [*k8s, *monitoring] for error in _schema_errors(doc, crds)]
    assert errors == []


def test_every_custom_resource_kind_has_its_crd_vendored(
    k8s: list[dict[str, Any]], monitoring: list[dict[str, Any]], crds: dict[tuple[str, str], dict[str, Any]]
) -> None:
    custom = {
        (d["apiVersion"], d["kind"]) for d in [*k8s, *monitoring] if "." in d["apiVersion"].split("/")[0]
    }
    custom -= {(v, k) for v, k in custom if v.split("/")[0].endswith(".k8s.io")}
    assert custom - NOT_VENDORED <= crds.keys()
    assert {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    } <= crds.keys()


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ["spec", "template", "spec", "containers", 0, "imagePullPolicyy"], "Always"),
        ("Deployment", ["spec", "replicas"], "two"),
        ("ScaledObject", ["spec", "maxReplicaCountt"], 3),
        ("KafkaUser", ["spec", "authorization", "acls", 0, "operations"], ["Reed"]),
        ("KafkaTopic", ["metadata", "lables"], {"a": "b"}),
        ("PrometheusRule", ["spec", "groups", 0, "rules", 0, "fore"], "5m"),
    ],
)
def test_the_validation_rejects_a_misspelt_or_mistyped_field(
    k8s: list[dict[str, Any]],
    monitoring: list[dict[str, Any]],
    crds: dict[tuple[str, str], dict[str, Any]],
    kind: str,
    path: list[Any],
    value: Any,
) -> None:
    doc = copy.deepcopy(next(d for d in [*k8s, *monitoring] if d["kind"] == kind))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert _schema_errors(doc, crds)


def test_kustomizations_list_every_manifest() -> None:
    for folder in (K8S, MONITORING):
        listed = set(yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"])
        present = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert present <= listed, f"{folder.name}: not in kustomization.yaml: {sorted(present - listed)}"
        assert all((folder / name).exists() for name in listed), folder


# --- policy for every pod -------------------------------------------------------------------------


def test_every_container_is_bounded_and_unprivileged(
    k8s: list[dict[str, Any]], monitoring: list[dict[str, Any]]
) -> None:
    for doc, pod in _workloads([*k8s, *monitoring]):
        where = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), (where, container["name"])
            assert {"cpu", "memory"} <= resources["limits"].keys(), (where, container["name"])
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (where, container["name"])
            assert security["capabilities"] == {"drop": ["ALL"]}, (where, container["name"])


_PROBED = {"steel-worker", "steel-dashboard", "steel-triton", "steel-postgres", "steel-redis"}


def test_long_running_services_have_probes_on_real_ports(k8s: list[dict[str, Any]]) -> None:
    names = {doc["metadata"]["name"] for doc, _ in _workloads(k8s)}
    assert _PROBED <= names
    for doc, pod in _workloads(k8s):
        if doc["metadata"]["name"] not in _PROBED:
            continue
        container = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container[kind]
            if "httpGet" in probe:
                assert probe["httpGet"]["port"] in ports, f"{doc['metadata']['name']} {kind}"
            else:
                assert probe["exec"]["command"], f"{doc['metadata']['name']} {kind}"


def test_selectors_match_their_pods(k8s: list[dict[str, Any]]) -> None:
    pods = [_pod_labels(d) for d, _ in _workloads(k8s)]
    for doc in k8s:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = _pod_labels(doc)
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), doc["metadata"]["name"]
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert any(selector.items() <= labels.items() for labels in pods), doc["metadata"]["name"]


# --- Triton: model delivery and GPU placement (issue 17, items 2 and 5) ---------------------------


def test_triton_fetches_a_versioned_repository_from_object_storage_into_an_empty_dir(
    k8s: list[dict[str, Any]],
) -> None:
    assert not [d for d in k8s if d["kind"] == "PersistentVolumeClaim"], "no claim for the models"
    deployment = _one(k8s, "Deployment", "steel-triton")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (fetch,) = pod["initContainers"]
    (triton,) = pod["containers"]
    # The init container writes the volume Triton serves, read-only, from an emptyDir.
    models = next(m for m in triton["volumeMounts"] if m["mountPath"] == "/models")
    assert models["readOnly"] is True and "emptyDir" in volumes[models["name"]]
    assert any(m["name"] == models["name"] and not m.get("readOnly") for m in fetch["volumeMounts"])
    assert "--model-repository=/models" in triton["args"]
    # A pinned image, not :latest; a versioned prefix from the ConfigMap; credentials from a Secret.
    image, _, tag = fetch["image"].rpartition(":")
    assert image and re.fullmatch(r"\d+(\.\d+)+", tag), fetch["image"]
    script = " ".join([*fetch.get("command", []), *fetch.get("args", [])])
    assert "s3://${MODEL_REPOSITORY_BUCKET}/steel/triton_repository_onnx/${MODEL_VERSION}/" in script
    assert "steel_ensemble/config.pbtxt" in script  # an empty prefix must fail, not start Triton
    config_name = fetch["envFrom"][0]["configMapRef"]["name"]
    config = _one(k8s, "ConfigMap", config_name)["data"]
    assert {"MODEL_REPOSITORY_BUCKET", "MODEL_REPOSITORY_ENDPOINT", "MODEL_VERSION"} <= config.keys()
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in fetch["env"] if "valueFrom" in e}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secrets.keys()
    example = (K8S / "secrets.env.example").read_text()
    assert all(f"\n{ref['key']}=" in example for ref in secrets.values())
    # Ready = the ensemble the workers call is loaded, not merely the server up.
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/models/steel_ensemble/ready"
    text = (K8S / "triton.yaml").read_text() + (K8S / "kustomization.yaml").read_text()
    assert "kubectl cp" not in text and "ReadOnlyMany" not in text


def test_triton_recreates_on_update_and_runs_on_gpu_nodes(k8s: list[dict[str, Any]]) -> None:
    spec = _one(k8s, "Deployment", "steel-triton")["spec"]
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1


# --- workers: KEDA owns the count, probes on loop progress and readiness (items 4 and 6) -----------


def test_no_keda_scaled_target_sets_replicas(k8s: list[dict[str, Any]]) -> None:
    scaled = [d for d in k8s if d["kind"] == "ScaledObject"]
    assert scaled
    for obj in scaled:
        ref = obj["spec"]["scaleTargetRef"]
        target = _one(k8s, ref.get("kind", "Deployment"), ref["name"])
        assert "replicas" not in target["spec"], f"{ref['name']}: KEDA owns replicas"
        assert obj["spec"]["minReplicaCount"] >= 1


def test_worker_probes_use_livez_and_readyz_on_the_metrics_port(k8s: list[dict[str, Any]]) -> None:
    worker = _container(k8s, "Deployment", "steel-worker")
    port = int(worker["args"][worker["args"].index("--metrics-port") + 1])
    assert {p["name"]: p["containerPort"] for p in worker["ports"]}["metrics"] == port
    assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Setup (waiting for Triton and the migration) is covered before liveness may restart it.
    assert worker["startupProbe"]["httpGet"]["path"] == "/livez"
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_dashboard_reaches_every_worker_through_the_headless_metrics_service(
    k8s: list[dict[str, Any]],
) -> None:
    service = _one(k8s, "Service", "steel-worker-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics"}]
    worker = _one(k8s, "Deployment", "steel-worker")
    assert service["spec"]["selector"].items() <= _pod_labels(worker).items()
    dashboard = _container(k8s, "Deployment", "steel-dashboard")
    env = {e["name"]: e.get("value") for e in dashboard["env"]}
    urls = json.loads(env["STEEL_DASHBOARD_WORKER_METRICS_URLS"])
    assert urls == ["http://steel-worker-metrics:9100/metrics"]
    assert Settings(dashboard_worker_metrics_urls=urls).dashboard_worker_metrics_urls == tuple(urls)


def test_maintenance_cronjob_runs_steel_maintain_as_the_schema_owner(k8s: list[dict[str, Any]]) -> None:
    (cron,) = [d for d in k8s if d["kind"] == "CronJob"]
    (container,) = _pod(cron)["containers"]
    assert container["args"] == ["maintain"] and "command" not in container
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert urlsplit(env["STEEL_POSTGRES_URL"].replace("postgresql+psycopg", "postgresql")).username == "steel"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
