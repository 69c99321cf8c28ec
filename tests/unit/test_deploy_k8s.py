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
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from deploy_files import DEPLOY, K8S, MONITORING, one, yaml_docs

from steelcore.settings import Settings

CRDS = DEPLOY / "schemas" / "crds"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
KUBERNETES_VERSION = "1.37"
# Custom resources whose CRD is too large to carry into deploy/schemas/crds (deploy/schemas/README.md):
# checked against Kubernetes' ObjectMeta and by the structural tests in this file and
# test_deploy_manifests.py instead.
NOT_VENDORED = {("kafka.strimzi.io/v1beta2", "Kafka")}


# --- loading --------------------------------------------------------------------------------------


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
    (container,) = _pod(one(docs, kind, name))["containers"]
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
        (crd,) = yaml_docs(path)
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
        ("KafkaNodePool", ["spec", "storage", "volumes", 0, "kraftMetadata"], "separate"),
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
    deployment = one(k8s, "Deployment", "steel-triton")
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
    config = one(k8s, "ConfigMap", config_name)["data"]
    assert {"MODEL_REPOSITORY_BUCKET", "MODEL_REPOSITORY_ENDPOINT", "MODEL_VERSION"} <= config.keys()
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in fetch["env"] if "valueFrom" in e}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secrets.keys()
    example = (K8S / "secrets.env.example").read_text()
    assert all(f"\n{ref['key']}=" in example for ref in secrets.values())
    # Ready = the ensemble the workers call is loaded, not merely the server up.
    model = one(k8s, "ConfigMap", "steel-config")["data"]["STEEL_TRITON_MODEL"]
    assert triton["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{model}/ready"
    assert f"{model}/config.pbtxt" in script
    text = (K8S / "triton.yaml").read_text() + (K8S / "kustomization.yaml").read_text()
    assert "kubectl cp" not in text and "ReadOnlyMany" not in text


def test_triton_recreates_on_update_and_runs_on_gpu_nodes(k8s: list[dict[str, Any]]) -> None:
    spec = one(k8s, "Deployment", "steel-triton")["spec"]
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
        target = one(k8s, ref.get("kind", "Deployment"), ref["name"])
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
    service = one(k8s, "Service", "steel-worker-metrics")
    assert service["spec"]["clusterIP"] == "None"
    # A paused (not ready) worker's metrics are the ones an operator needs to see.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics"}]
    worker = one(k8s, "Deployment", "steel-worker")
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


# --- NetworkPolicies (item 7) ---------------------------------------------------------------------

# The URL settings a role takes from the shared ConfigMap and really uses (from the code: `steel work`
# reads Kafka and Triton there, `steel produce` and the dashboard Kafka; the dashboard's Triton URL and
# every database and Redis URL are set per container). The actuator and the jobs use none of them.
CONFIG_URLS_USED = {
    "work": {"STEEL_KAFKA_URL", "STEEL_TRITON_URL"},
    "produce": {"STEEL_KAFKA_URL"},
    "dashboard": {"STEEL_KAFKA_URL"},
}
# Strimzi names the Kafka exporter's metrics port tcp-prometheus and serves it on 9404.
STRIMZI_PORTS = {"tcp-prometheus": 9404}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def _peer_is_pod(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    """A peer of this namespace selecting a pod with these labels."""
    return "namespaceSelector" not in peer and "podSelector" in peer and _selects(peer["podSelector"], labels)


def _port_allowed(rule: dict[str, Any], port: int) -> bool:
    return "ports" not in rule or any(p.get("port") == port for p in rule["ports"])


def _allowed(
    policies: list[dict[str, Any]], direction: str, local: dict[str, str], peer: dict[str, str], port: int
) -> bool:
    """Whether some policy lets `local` send (Egress) to or receive (Ingress) from `peer` on `port`."""
    key, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in policies:
        spec = policy["spec"]
        if direction not in spec["policyTypes"] or not _selects(spec["podSelector"], local):
            continue
        for rule in spec.get(key, []):
            if _port_allowed(rule, port) and (
                peers not in rule or any(_peer_is_pod(p, peer) for p in rule[peers])
            ):
                return True
    return False


def _role(container: dict[str, Any]) -> str | None:
    words = [*container.get("command", []), *container.get("args", [])]
    return words[0] if words and words[0] in CONFIG_URLS_USED else None


def _endpoints(value: str) -> Iterator[tuple[str, int]]:
    """(host, port) of every URL or host:port in an environment value (JSON lists included)."""
    values = json.loads(value) if value.startswith("[") else [value]
    for item in values:
        if "://" in item:
            parts = urlsplit(item.replace("$(", "").replace(")", ""))
            if parts.hostname and parts.port:
                yield parts.hostname, parts.port
        elif m := re.fullmatch(r"([a-z0-9.-]+):(\d+)(/.*)?", item):
            yield m[1], int(m[2])


def _connections(k8s: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, str], str, int]]:
    """(workload, its pod labels, host, port) for every service a workload's configuration names."""
    config = one(k8s, "ConfigMap", "steel-config")["data"]
    for doc, pod in _workloads(k8s):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            values = [e["value"] for e in container.get("env", []) if "value" in e]
            values += [config[var] for var in CONFIG_URLS_USED.get(_role(container) or "", ())]
            for value in values:
                for host, port in _endpoints(value):
                    yield doc["metadata"]["name"], _pod_labels(doc), host, port


def _target(k8s: list[dict[str, Any]], host: str, port: int) -> tuple[dict[str, str], int]:
    """The labels of the pods behind a host name and the container port a connection reaches."""
    kafka = one(k8s, "Kafka")
    if host == f"{kafka['metadata']['name']}-kafka-bootstrap":
        assert [x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == port], f"no listener on {port}"
        return {"strimzi.io/cluster": kafka["metadata"]["name"], "strimzi.io/kind": "Kafka"}, port
    service = one(k8s, "Service", host)
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    backends = [
        d
        for d, _ in _workloads(k8s)
        if _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(d))
    ]
    assert backends, host
    container_ports = {p["name"]: p["containerPort"] for p in _pod(backends[0])["containers"][0]["ports"]}
    return service["spec"]["selector"], container_ports[service_port["targetPort"]]


def test_network_policies_deny_by_default_and_allow_dns(k8s: list[dict[str, Any]]) -> None:
    policies = [d for d in k8s if d["kind"] == "NetworkPolicy"]
    assert any(
        p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ), "a default-deny policy for the whole namespace"
    dns = [p for p in policies if p["spec"]["podSelector"] == {} and "Egress" in p["spec"]["policyTypes"]]
    assert any(
        {"protocol": "UDP", "port": 53} in rule.get("ports", [])
        for p in dns
        for rule in p["spec"].get("egress", [])
    )


def test_network_policies_allow_every_connection_the_configuration_names(k8s: list[dict[str, Any]]) -> None:
    policies = [d for d in k8s if d["kind"] == "NetworkPolicy"]
    kafka = one(k8s, "Kafka")
    connections = list(_connections(k8s))
    named = {(name, host) for name, _, host, _ in connections}
    # The derivation sees what the brief of each component says it talks to.
    assert {
        ("steel-worker", "steel-kafka-kafka-bootstrap"),
        ("steel-worker", "steel-triton"),
        ("steel-worker", "steel-postgres"),
        ("steel-worker", "steel-redis"),
        ("steel-producer-l1", "steel-kafka-kafka-bootstrap"),
        ("steel-actuator", "steel-redis"),
        ("steel-dashboard", "steel-worker-metrics"),
        ("steel-dashboard", "steel-triton"),
        ("steel-dashboard", "steel-postgres"),
        ("steel-dashboard", "steel-redis"),
        ("steel-dashboard", "steel-kafka-kafka-bootstrap"),
    } <= named
    missing = []
    for name, labels, host, port in connections:
        target, container_port = _target(k8s, host, port)
        if not _allowed(policies, "Egress", labels, target, container_port):
            missing.append(f"{name} -> {host}:{port} egress")
        if target.get("strimzi.io/kind") == "Kafka":
            (listener,) = [x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == port]
            if not any(_peer_is_pod(p, labels) for p in listener["networkPolicyPeers"]):
                missing.append(f"{name} -> {host}:{port} (listener networkPolicyPeers)")
        elif not _allowed(policies, "Ingress", target, labels, container_port):
            missing.append(f"{name} -> {host}:{port} ingress")
    assert missing == []
    # ... and nothing the configuration does not name: the actuator reaches Redis only.
    actuator = _pod_labels(one(k8s, "Deployment", "steel-actuator"))
    assert not _allowed(policies, "Egress", actuator, {"app.kubernetes.io/name": "steel-postgres"}, 5432)
    assert not _allowed(policies, "Egress", actuator, {"strimzi.io/cluster": "steel-kafka"}, 9093)


def test_network_policies_let_prometheus_scrape_and_the_ingress_reach_the_dashboard(
    k8s: list[dict[str, Any]], monitoring: list[dict[str, Any]]
) -> None:
    policies = [d for d in k8s if d["kind"] == "NetworkPolicy"]

    def from_namespace(name: str, labels: dict[str, str], port: int) -> bool:
        for policy in policies:
            spec = policy["spec"]
            if "Ingress" not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
                continue
            for rule in spec.get("ingress", []):
                peers = rule.get("from", [])
                namespaces = [p["namespaceSelector"] for p in peers if "namespaceSelector" in p]
                if _port_allowed(rule, port) and any(
                    _selects(n, {"kubernetes.io/metadata.name": name}) for n in namespaces
                ):
                    return True
        return False

    for monitor in (d for d in monitoring if d["kind"] == "PodMonitor"):
        labels = monitor["spec"]["selector"]["matchLabels"]
        pods = [d for d, _ in _workloads(k8s) if _selects({"matchLabels": labels}, _pod_labels(d))]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            if pods:
                ports = {p["name"]: p["containerPort"] for p in _pod(pods[0])["containers"][0]["ports"]}
            else:
                ports = STRIMZI_PORTS
            assert from_namespace("monitoring", labels, ports[endpoint["port"]]), monitor["metadata"]["name"]
    dashboard = _pod_labels(one(k8s, "Deployment", "steel-dashboard"))
    assert from_namespace("ingress-nginx", dashboard, 8501)


def test_object_storage_egress_for_model_fetch_and_backups(k8s: list[dict[str, Any]]) -> None:
    policies = [d for d in k8s if d["kind"] == "NetworkPolicy"]
    for kind, name in (("Deployment", "steel-triton"), ("StatefulSet", "steel-postgres")):
        labels = _pod_labels(one(k8s, kind, name))
        assert any(
            _selects(p["spec"]["podSelector"], labels)
            and any(
                _port_allowed(rule, 443) and any("ipBlock" in peer for peer in rule.get("to", []))
                for rule in p["spec"].get("egress", [])
            )
            for p in policies
        ), name


# --- Postgres: WAL archiving and base backups (item 8) --------------------------------------------


def test_postgres_archives_wal_and_takes_base_backups_to_object_storage(k8s: list[dict[str, Any]]) -> None:
    statefulset = one(k8s, "StatefulSet", "steel-postgres")
    pod = _pod(statefulset)
    containers = {c["name"]: c for c in pod["containers"]}
    server, backup = containers["postgres"], containers["backup"]
    settings = dict(a.split("=", 1) for a in server["args"] if "=" in a)
    assert settings["archive_mode"] == "on" and settings["wal_level"] == "replica"
    stanza = re.fullmatch(r"pgbackrest --stanza=(\w+) archive-push %p", settings["archive_command"])
    assert stanza, settings["archive_command"]
    assert 0 < int(settings["archive_timeout"]) <= 600
    script = backup["args"][0]
    assert f"--stanza={stanza[1]} stanza-create" in script and "backup" in script
    assert "--type=full" in script and '--type="$type"' in script
    # A failing backup is logged, never fatal: a crashed sidecar would make the pod not ready and take
    # the database off its Service.
    for line in script.splitlines():
        assert not line.strip().startswith("pgbackrest") or "||" in line, line
    # One configuration for both, with a [stanza] section on the server's data directory.
    config_volume = {v["name"]: v for v in pod["volumes"]}
    mounts = [{m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (server, backup)]
    assert mounts[0]["/etc/pgbackrest"] == mounts[1]["/etc/pgbackrest"]
    config_map = one(k8s, "ConfigMap", config_volume[mounts[0]["/etc/pgbackrest"]]["configMap"]["name"])
    conf = config_map["data"]["pgbackrest.conf"]
    pgdata = {e["name"]: e.get("value") for e in server["env"]}["PGDATA"]
    assert f"[{stanza[1]}]" in conf and f"pg1-path={pgdata}" in conf
    assert "repo1-type=s3" in conf and re.search(r"repo1-retention-full=\d+", conf)
    # Both share the data volume and the server's socket; keys and passphrase come from the Secret.
    assert mounts[0]["/var/lib/postgresql/data"] == mounts[1]["/var/lib/postgresql/data"]
    assert "/var/run/postgresql" in mounts[0] and "/var/run/postgresql" in mounts[1]
    for container in (server, backup):
        secret_env = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert {
            "PGBACKREST_REPO1_S3_KEY",
            "PGBACKREST_REPO1_S3_KEY_SECRET",
            "PGBACKREST_REPO1_CIPHER_PASS",
        } <= (secret_env)
    assert not re.search(r"(?m)^repo1-(s3-key|s3-key-secret|cipher-pass)=", conf)
    # The Service name and port every client uses are unchanged.
    service = one(k8s, "Service", "steel-postgres")
    assert service["spec"]["ports"][0]["port"] == 5432
    assert (K8S / "postgres-image" / "Dockerfile").read_text().count("pgbackrest") >= 2


# --- alert rules (item 6) -------------------------------------------------------------------------

# Prometheus' rule-file format (prometheus.io/docs/prometheus/latest/configuration/recording_rules):
# unknown keys are errors there too.
_DURATION = r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$"
_RULE_FILE_SCHEMA = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": _DURATION},
                    "limit": {"type": "integer"},
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["alert", "expr"],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string", "pattern": _DURATION},
                                "keep_firing_for": {"type": "string", "pattern": _DURATION},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        }
    },
}
# Metrics of the exporters the rules read, as each one's code or documentation names them.
EXPORTER_METRICS = {
    "up",  # Prometheus itself, per scrape target
    "kafka_consumergroup_lag",  # danielqsj/kafka_exporter (Strimzi's Kafka Exporter)
    "nv_inference_count",  # Triton, docs/user_guide/metrics.md
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "node_filesystem_avail_bytes",  # prometheus/node_exporter, filesystem collector
    "node_filesystem_size_bytes",
    "kubelet_volume_stats_available_bytes",  # the kubelet, per PersistentVolumeClaim
    "kubelet_volume_stats_capacity_bytes",
    "pg_up",  # prometheus-community/postgres_exporter
    "redis_up",  # oliver006/redis_exporter
    "redis_stream_group_messages_pending",  # oliver006/redis_exporter with check-streams
}
_FUNCTIONS = {
    "absent",
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "increase",
    "delta",
    "deriv",
    "predict_linear",
}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}


def _metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression, after checking its brackets and quotes pair up and
    every function is one PromQL has. Label matchers, ranges and grouping clauses are not names."""
    assert expr.count('"') % 2 == 0, expr
    bare = re.sub(r'"[^"]*"', '""', expr)
    for opening, closing in ("()", "{}", "[]"):
        depth = 0
        for char in bare:
            depth += (char == opening) - (char == closing)
            assert depth >= 0, expr
        assert depth == 0, expr
    for matchers in re.findall(r"\{([^}]*)\}", bare):
        for matcher in filter(None, (m.strip() for m in matchers.split(","))):
            assert re.fullmatch(r'[a-zA-Z_]\w*\s*(=|!=|=~|!~)\s*""', matcher), (expr, matcher)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][\w:]*)\b(\s*\()?", bare):
        word, call = m[1], m[2]
        if call:
            assert word in _FUNCTIONS, (expr, word)
        elif word not in _KEYWORDS and not re.fullmatch(r"\d.*|e\d+", word):
            names.add(word)
    assert names, expr
    return names


def _exported_worker_metrics() -> set[str]:
    from workers.worker_metrics import WorkerMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + s for f in WorkerMetrics().registry.collect() for s in suffixes[f.type]}


@pytest.fixture(scope="module")
def alert_rules() -> dict[str, Any]:
    return yaml.safe_load(ALERTS.read_text())


def test_alert_rules_follow_the_rule_file_format_and_name_real_metrics(alert_rules: dict[str, Any]) -> None:
    jsonschema.validate(alert_rules, _RULE_FILE_SCHEMA)
    rules = [r for g in alert_rules["groups"] for r in g["rules"]]
    assert len({g["name"] for g in alert_rules["groups"]}) == len(alert_rules["groups"])
    assert len({r["alert"] for r in rules}) == len(rules)
    known = _exported_worker_metrics() | EXPORTER_METRICS
    for rule in rules:
        assert _metric_names(rule["expr"]) <= known, (rule["alert"], _metric_names(rule["expr"]) - known)
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), rule["alert"]


def test_the_expression_check_rejects_unknown_metrics_and_broken_syntax() -> None:
    known = _exported_worker_metrics() | EXPORTER_METRICS
    assert not _metric_names("steel_worker_frames{outcome='x'}".replace("'", '"')) <= known  # no _total
    for broken in ("sum(rate(up[5m])", 'up{job="x"', "up{job=x}", "sumx(up)"):
        with pytest.raises(AssertionError):
            _metric_names(broken)


def test_alert_rules_cover_what_the_operators_asked_for(
    k8s: list[dict[str, Any]], alert_rules: dict[str, Any]
) -> None:
    exprs = {r["alert"]: r["expr"] for g in alert_rules["groups"] for r in g["rules"]}
    text = " ".join(exprs.values())
    config = one(k8s, "ConfigMap", "steel-config")["data"]
    # Worker down; latency target (the worker's event lag against the target it exports, 0.5 s by
    # default); consumer lag of the workers' group on the frames topic; dead letters; alarm stream
    # pending; Triton not ready; disk; Postgres; Redis.
    assert 'up{job="steel-worker"} == 0' in text
    assert "steel_worker_event_lag_seconds > steel_worker_latency_target_seconds" in text
    assert Settings().latency_target_s == 0.5
    lag = next(e for e in exprs.values() if "kafka_consumergroup_lag" in e)
    assert (
        f'consumergroup="{config["STEEL_CONSUMER_GROUP"]}"' in lag
        and f'topic="{config["STEEL_FRAMES_TOPIC"]}"' in lag
    )
    assert 'steel_worker_frames_total{outcome="dead_lettered"}' in text
    assert f'redis_stream_group_messages_pending{{stream="{config["STEEL_ALARM_STREAM"]}"}}' in text
    assert f'nv_inference_count{{model="{config["STEEL_TRITON_MODEL"]}"}}' in text
    assert "node_filesystem_avail_bytes" in text and "kubelet_volume_stats_available_bytes" in text
    assert "pg_up == 0" in text and "redis_up == 0" in text
    # The jobs the rules name are the ones the PodMonitors give their targets.
    jobs = set(re.findall(r'job="([^"]+)"', text))
    monitors = yaml.safe_load_all((MONITORING / "podmonitors.yaml").read_text())
    relabelled = {
        r["replacement"]
        for m in monitors
        for e in m["spec"]["podMetricsEndpoints"]
        for r in e.get("relabelings", [])
        if r.get("targetLabel") == "job"
    }
    assert jobs <= relabelled, jobs - relabelled


def test_prometheus_rule_carries_exactly_the_groups_of_alerts_yml(
    monitoring: list[dict[str, Any]], alert_rules: dict[str, Any]
) -> None:
    rule = one(monitoring, "PrometheusRule")
    assert rule["spec"]["groups"] == alert_rules["groups"]
