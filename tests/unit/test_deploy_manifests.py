"""deploy/: the compose file, the Kubernetes manifests, the images and the Grafana dashboard, checked
against their schemas and against the code they configure (no container engine runs here).

- compose.yaml against the Compose Specification schema (deploy/schemas/compose-spec.json, vendored
  from compose-spec/compose-spec); the Kubernetes objects against a small schema of our own;
- every STEEL_* variable is a settings field and its value parses as one (steelcore/settings.py,
  dashboard/config.py), every role gets the service URLs it uses, and they point at services and
  ports that exist;
- topics, consumer group and partitions agree everywhere (producers, workers, topic creation,
  KEDA, the dashboard's lag panel); Kafka keeps 3 replicas with 2 in sync; Triton gets a GPU;
  workers scale on consumer lag;
- the images: producer and dashboard extras never pull torch, the Triton image carries every
  steelcore module its python-backend models import, as Python 3.10;
- the dashboard's metric names are the ones workers/worker_metrics.py exports;
- Kafka in compose: every listener authenticates (SCRAM-SHA-512 for the services, none PLAINTEXT),
  each client logs in as its own principal, and the ACLs kafka-init creates (its script run here
  with stub Kafka tools) are exactly deploy/compose/kafka-acls.txt, which mirrors the Kubernetes
  KafkaUsers.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from deploy_files import COMPOSE_FILE, DEPLOY, K8S, one

from dashboard.config import DashboardSettings
from steelcore.paths import REPO_ROOT, TRITON_REPOSITORY
from steelcore.postgres.schema import TABLES
from steelcore.settings import Settings
from workers.worker_metrics import WorkerMetrics

COMPOSE_DIR = DEPLOY / "compose"
KAFKA_ACLS_FILE = COMPOSE_DIR / "kafka-acls.txt"
TRITON_PYTHON_MODELS = ("postprocess", "steel_cascade")  # python-backend models of the ONNX variant
URL_VARS = {
    "kafka": "STEEL_KAFKA_URL",
    "postgres": "STEEL_POSTGRES_URL",
    "redis": "STEEL_REDIS_URL",
    "triton": "STEEL_TRITON_URL",
}
# What each role connects to, from the code: `steel work` reads all four, `steel produce` Kafka,
# `steel actuator` Redis, the migration Postgres, and the dashboard's pages and health probes all four.
ROLE_NEEDS = {
    "work": {"kafka", "postgres", "redis", "triton"},
    "produce": {"kafka"},
    "actuator": {"redis"},
    "dashboard": {"kafka", "postgres", "redis", "triton"},
    "migrate": {"postgres"},
}
# The dashboard reaches Redis as its own ACL user, through its own setting.
ROLE_URL_VARS = {"dashboard": {**URL_VARS, "redis": "STEEL_DASHBOARD_REDIS_URL"}}
TOPIC_VARS = ("STEEL_FRAMES_TOPIC", "STEEL_TRUTH_TOPIC", "STEEL_DEAD_LETTER_TOPIC")
# Triton 2.51's metrics (server docs, metrics.md) the dashboard may use.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
}
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}|\$\([A-Z0-9_]+\)")


# --- loading --------------------------------------------------------------------------------------


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return [command] if isinstance(command, str) else [str(c) for c in command]


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> file in the repository, for the service's bind mounts of deploy/ files."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            found[target] = DEPLOY / source
    return found


def _mounted_script(service: dict[str, Any]) -> str:
    """The text of the script a service's entrypoint runs from a mounted deploy/ file."""
    entrypoint = [str(e) for e in service.get("entrypoint") or []]
    assert entrypoint[:1] == ["/bin/sh"] and len(entrypoint) == 2, entrypoint
    return _mounts(service)[entrypoint[1]].read_text()


def _url_var(role: str, service: str) -> str:
    return ROLE_URL_VARS.get(role, URL_VARS)[service]


def _compose_role(service: dict[str, Any]) -> str | None:
    command = _command(service)
    if command and command[0] in ROLE_NEEDS:
        return command[0]
    return "migrate" if any("steelcore.postgres.migrate upgrade" in c for c in command) else None


def _workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) of every object that runs pods."""
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc, spec["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc, spec["jobTemplate"]["spec"]["template"]["spec"]


def _container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom), then its own env (values from a
    secret read as a placeholder)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", f"$({item['name']})")
    return env


def _k8s_role(container: dict[str, Any]) -> str | None:
    words = [*container.get("command", []), *container.get("args", [])]
    if words and words[0] in ROLE_NEEDS:
        return words[0]
    return "migrate" if any("steelcore.postgres.migrate upgrade" in w for w in words) else None


def _k8s_roles(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, str], str]]:
    for doc, pod in _workloads(docs):
        for container in pod["containers"]:
            role = _k8s_role(container)
            if role:
                yield role, _container_env(container, docs), doc["metadata"]["name"]


def _compose_roles(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, str], str]]:
    for name, service in services.items():
        role = _compose_role(service)
        if role:
            yield role, _environment(service), name


def _all_roles(services: dict[str, Any], k8s: list[dict[str, Any]]) -> list[tuple[str, dict[str, str], str]]:
    return [*_compose_roles(services), *_k8s_roles(k8s)]


# --- schemas --------------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose)
    ]
    assert errors == []


def test_the_compose_schema_rejects_a_misspelt_key(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["enviroment"] = {"STEEL_KAFKA_URL": "x"}
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


# The Kubernetes objects' schemas and probes: tests/unit/test_deploy_k8s.py.


def test_probe_paths_match_what_the_services_serve(
    k8s: list[dict[str, Any]], services: dict[str, Any]
) -> None:
    def container(name: str) -> dict[str, Any]:
        (c,) = one(k8s, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        return c

    worker = container("steel-worker")
    metrics_port = int(worker["args"][worker["args"].index("--metrics-port") + 1])
    assert {p["containerPort"] for p in worker["ports"] if p["name"] == "metrics"} == {metrics_port}
    # The worker's probes (/livez, /readyz) and Triton's: tests/unit/test_deploy_k8s.py.
    assert container("steel-dashboard")["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    # compose: the healthcheck asks the port the command serves.
    command = _command(services["worker"])
    port = command[command.index("--metrics-port") + 1]
    assert f":{port}/livez" in " ".join(services["worker"]["healthcheck"]["test"])
    # compose's Triton healthcheck: tests/unit/test_deploy_compose.py
    assert "/_stcore/health" in " ".join(services["dashboard"]["healthcheck"]["test"])


def test_selectors_match_their_pods(k8s: list[dict[str, Any]]) -> None:
    for doc in k8s:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), doc["metadata"]["name"]
    pods = [
        d["spec"]["template"]["metadata"]["labels"] for d in k8s if d["kind"] in ("Deployment", "StatefulSet")
    ]
    for doc in k8s:
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert any(selector.items() <= labels.items() for labels in pods), doc["metadata"]["name"]


# --- settings -------------------------------------------------------------------------------------


def _steel_vars(env: dict[str, str]) -> dict[str, str]:
    return {k: _PLACEHOLDER.sub("secret", v) for k, v in env.items() if k.startswith("STEEL_")}


def test_every_steel_variable_is_a_setting_and_parses(
    services: dict[str, Any], k8s: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = set(DashboardSettings.model_fields)  # Settings plus the dashboard's own fields
    environments = [_environment(s) for s in services.values()]
    environments += [_container_env(c, k8s) for _, pod in _workloads(k8s) for c in pod["containers"]]
    seen = set()
    for env in environments:
        steel = _steel_vars(env)
        unknown = sorted(k for k in steel if k.removeprefix("STEEL_").lower() not in fields)
        assert unknown == [], f"not a setting: {unknown}"
        for key in [k for k in os.environ if k.startswith("STEEL_")]:
            monkeypatch.delenv(key)
        for key, value in steel.items():
            monkeypatch.setenv(key, value)
        DashboardSettings()  # raises ValidationError for a value the field does not accept
        seen |= set(steel)
    assert {"STEEL_KAFKA_URL", "STEEL_POSTGRES_URL", "STEEL_REDIS_URL", "STEEL_TRITON_URL"} <= seen


def test_every_role_gets_the_urls_it_uses(services: dict[str, Any], k8s: list[dict[str, Any]]) -> None:
    roles = _all_roles(services, k8s)
    assert {role for role, _, _ in roles} == set(ROLE_NEEDS)
    for role, env, where in roles:
        missing = sorted(_url_var(role, s) for s in ROLE_NEEDS[role] if not env.get(_url_var(role, s)))
        assert missing == [], f"{where} ({role}) lacks {missing}"
        if role == "dashboard":
            assert env.get("STEEL_DASHBOARD_DB_URL") and env.get("STEEL_DASHBOARD_FEEDBACK_DB_URL"), where
        if role in ("work", "produce", "dashboard") and env.get(
            "STEEL_KAFKA_SECURITY_PROTOCOL", ""
        ).startswith("SASL"):
            for var in (
                "STEEL_KAFKA_SASL_MECHANISM",
                "STEEL_KAFKA_SASL_USERNAME",
                "STEEL_KAFKA_SASL_PASSWORD",
            ):
                assert env.get(var), f"{where}: {var}"


def _compose_ports(services: dict[str, Any]) -> dict[str, set[int]]:
    """Ports each compose service listens on, from its own configuration."""
    ports: dict[str, set[int]] = {}
    for name, service in services.items():
        env = _environment(service)
        if "KAFKA_LISTENERS" in env:
            ports[name] = {int(u.rsplit(":", 1)[1]) for u in env["KAFKA_LISTENERS"].split(",")}
    ports["postgres"] = {5432}  # the postgres image's default
    ports["redis"] = {6379}  # the redis image's default (no --port)
    triton_command = " ".join(_dockerfile_cmd(DEPLOY / "Dockerfile.triton") + _command(services["triton"]))
    ports["triton"] = {int(p) for p in re.findall(r"--(?:http|grpc|metrics)-port=(\d+)", triton_command)}
    return ports


def _hosts(var: str, value: str) -> list[tuple[str, int]]:
    if var == "STEEL_KAFKA_URL":
        return [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in value.split(",")]
    if var == "STEEL_TRITON_URL":
        host, port = value.rsplit(":", 1)
        return [(host, int(port))]
    parts = urlsplit(_PLACEHOLDER.sub("secret", value))
    return [(str(parts.hostname), int(parts.port or 0))]


def test_compose_urls_point_at_listening_services(services: dict[str, Any]) -> None:
    ports = _compose_ports(services)
    for role, env, where in _compose_roles(services):
        for service in ROLE_NEEDS[role]:
            var = _url_var(role, service)
            for host, port in _hosts(var, env[var]):
                assert port in ports.get(host, set()), f"{where}: {var} -> {host}:{port}"
        if env.get("STEEL_TRITON_PROTOCOL", "grpc") == "grpc" and "STEEL_TRITON_URL" in env:
            assert env["STEEL_TRITON_URL"].endswith(":8001"), where
        elif "STEEL_TRITON_URL" in env:
            assert env["STEEL_TRITON_URL"].endswith(":8000"), where


def test_k8s_urls_point_at_services(k8s: list[dict[str, Any]]) -> None:
    ports = {
        d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in k8s if d["kind"] == "Service"
    }
    kafka = one(k8s, "Kafka")
    ports[f"{kafka['metadata']['name']}-kafka-bootstrap"] = {
        listener["port"] for listener in kafka["spec"]["kafka"]["listeners"]
    }
    for role, env, where in _k8s_roles(k8s):
        for service in ROLE_NEEDS[role]:
            var = _url_var(role, service)
            for host, port in _hosts(var, env[var]):
                assert port in ports.get(host, set()), f"{where}: {var} -> {host}:{port}"


def test_no_secret_is_written_into_the_repository(
    services: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    inline_password = re.compile(r"://[^/@:\s]*:(?!\$\{|\$\()[^@\s]+@")
    for name, service in services.items():
        for key, value in _environment(service).items():
            assert not inline_password.search(value), f"{name}: {key} holds a password"
            if "PASSWORD" in key and not key.endswith("_FILE"):
                assert value.startswith("${") and ":?" in value, f"{name}: {key}"
    assert not [d for d in k8s if d["kind"] == "Secret"]
    for _, pod in _workloads(k8s):
        for container in pod["containers"]:
            for item in container.get("env", []):
                assert not inline_password.search(item.get("value", "")), item["name"]
                if "PASSWORD" in item["name"]:
                    assert "secretKeyRef" in item.get("valueFrom", {}), item["name"]
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert ".env" in ignored and "secrets.env" in (K8S / ".gitignore").read_text().split()


def test_env_example_lists_every_required_variable(compose: dict[str, Any]) -> None:
    lines = [line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", "\n".join(lines)))
    required |= {s["environment"] for s in compose["secrets"].values() if "environment" in s}
    example_lines = (DEPLOY / ".env.example").read_text().splitlines()
    example = {line.split("=", 1)[0].lstrip("# ") for line in example_lines if "=" in line}
    assert required and required <= example, sorted(required - example)
    for line in example_lines:
        if "PASSWORD=" in line and not line.startswith("#"):
            assert line.endswith("="), f"a value in .env.example: {line}"


# --- Kafka ----------------------------------------------------------------------------------------


def test_topics_group_and_partitions_agree_everywhere(
    services: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    defaults = Settings()
    for env_sets in (
        [env for role, env, _ in _compose_roles(services) if "kafka" in ROLE_NEEDS[role]],
        [env for role, env, _ in _k8s_roles(k8s) if "kafka" in ROLE_NEEDS[role]],
    ):
        effective = {
            tuple(env.get(v, getattr(defaults, v.removeprefix("STEEL_").lower())) for v in TOPIC_VARS)
            for env in env_sets
        }
        assert len(effective) == 1, f"services disagree on topics: {effective}"
        groups = {env.get("STEEL_CONSUMER_GROUP", defaults.consumer_group) for env in env_sets}
        assert len(groups) == 1

    # compose: kafka-init creates exactly those topics, with the partitions the clients expect.
    init = services["kafka-init"]
    init_env = _environment(init)
    script = _mounted_script(init)
    created = {init_env[v] for v in re.findall(r'^create "\$([A-Z_]+)"', script, re.M)}
    worker_env = _environment(services["worker"])
    assert created == {worker_env[v] for v in TOPIC_VARS}
    assert init_env["STEEL_FRAMES_PARTITIONS"] == worker_env["STEEL_FRAMES_PARTITIONS"]

    # Kubernetes: the KafkaTopics, the ConfigMap and KEDA agree.
    config = one(k8s, "ConfigMap", "steel-config")["data"]
    topics = {d["spec"]["topicName"]: d["spec"] for d in k8s if d["kind"] == "KafkaTopic"}
    assert set(topics) == {config[v] for v in TOPIC_VARS}
    assert {t["partitions"] for t in topics.values()} == {int(config["STEEL_FRAMES_PARTITIONS"])}


def test_kafka_keeps_three_replicas_with_two_in_sync(
    services: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    brokers = {
        n: _environment(s)
        for n, s in services.items()
        if "broker" in _environment(s).get("KAFKA_PROCESS_ROLES", "")
    }
    assert len(brokers) == 3
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in brokers.values()}
    assert len(voters) == 1
    assert {f"{env['KAFKA_NODE_ID']}@{name}:9093" for name, env in brokers.items()} == set(
        voters.pop().split(",")
    )
    for env in brokers.values():
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    script = _mounted_script(services["kafka-init"])
    assert re.findall(r"--replication-factor (\d+)", script) == ["3"]
    assert re.findall(r"min\.insync\.replicas=(\d+)", script) == ["2"]
    assert set(re.findall(r"kafka-(\d)", services["worker"]["environment"]["STEEL_KAFKA_URL"])) == {
        "1",
        "2",
        "3",
    }

    pool = one(k8s, "KafkaNodePool")
    assert pool["spec"]["replicas"] == 3 and "broker" in pool["spec"]["roles"]
    config = one(k8s, "Kafka")["spec"]["kafka"]["config"]
    assert (config["default.replication.factor"], config["min.insync.replicas"]) == (3, 2)
    for topic in (d for d in k8s if d["kind"] == "KafkaTopic"):
        assert (topic["spec"]["replicas"], topic["spec"]["config"]["min.insync.replicas"]) == (3, 2)


def test_workers_scale_on_consumer_lag(k8s: list[dict[str, Any]]) -> None:
    config = one(k8s, "ConfigMap", "steel-config")["data"]
    scaled = one(k8s, "ScaledObject")
    worker = one(k8s, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert _k8s_role(worker["spec"]["template"]["spec"]["containers"][0]) == "work"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka" and int(trigger["metadata"]["lagThreshold"]) > 0
    assert trigger["metadata"]["consumerGroup"] == config["STEEL_CONSUMER_GROUP"]
    assert trigger["metadata"]["topic"] == config["STEEL_FRAMES_TOPIC"]
    assert trigger["metadata"]["bootstrapServers"] == config["STEEL_KAFKA_URL"]
    one(k8s, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert scaled["spec"]["maxReplicaCount"] <= int(config["STEEL_FRAMES_PARTITIONS"])
    pdb = one(k8s, "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= worker["spec"]["template"]["metadata"]["labels"].items()
    )


# --- Triton and images ----------------------------------------------------------------------------


def test_triton_requests_a_gpu_and_serves_the_onnx_repository(
    services: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    devices = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and int(d.get("count", 1)) >= 1 for d in devices)
    # compose's model volume: tests/unit/test_deploy_compose.py
    (container,) = one(k8s, "Deployment", "steel-triton")["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert "--model-repository=/models" in container["args"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/models", "/dev/shm"}


def _dockerfile_cmd(path: Path) -> list[str]:
    text = path.read_text().replace("\\\n", " ")
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, flags=re.M)
    return json.loads(cmd)


def _steelcore_imports(path: Path) -> tuple[set[str], set[str]]:
    """(steelcore modules, other top-level modules) imported at run time (TYPE_CHECKING excluded)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    ours, others = set(), set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("steelcore"):
                ours.add(name)
            else:
                others.add(name.split(".")[0])
    return ours, others


def test_triton_image_carries_what_its_python_models_import() -> None:
    dockerfile = (DEPLOY / "Dockerfile.triton").read_text()
    (copy_line,) = [line for line in dockerfile.splitlines() if line.startswith("COPY steelcore/")]
    copied = {p.removesuffix(".py").replace("/", ".") for p in copy_line.split()[1:-1]}
    pending = [TRITON_REPOSITORY / m / "1" / "model.py" for m in TRITON_PYTHON_MODELS]
    needed, third_party = {"steelcore.__init__"}, set()
    while pending:
        ours, others = _steelcore_imports(pending.pop())
        third_party |= others
        for module in ours - needed:
            needed.add(module)
            pending.append(REPO_ROOT / (module.replace(".", "/") + ".py"))
    assert needed <= copied
    assert third_party - set(sys.stdlib_module_names) <= {"numpy", "cv2", "triton_python_backend_utils"}
    for module in copied:  # the 24.10 container runs Python 3.10
        ast.parse((REPO_ROOT / (module.replace(".", "/") + ".py")).read_text(), feature_version=(3, 10))
    assert re.search(r"numpy==1\.", dockerfile) and re.search(r"^USER (?!0\b|root\b)", dockerfile, re.M)


def _extra_packages(extras: str, optional: dict[str, list[str]]) -> set[str]:
    packages: set[str] = set()
    pending = [e.strip() for e in extras.split(",")]
    while pending:
        extra = pending.pop()
        assert extra in optional, f"no extra {extra!r} in pyproject.toml"
        for requirement in optional[extra]:
            inner = re.fullmatch(r"resunet-steel\[(.+)\]", requirement)
            if inner:
                pending.extend(inner.group(1).split(","))
            else:
                packages.add(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower())
    return packages


def test_producer_and_dashboard_images_never_pull_torch(services: dict[str, Any]) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    optional = pyproject["project"]["optional-dependencies"]
    base = {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in pyproject["project"]["dependencies"]}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2 and "python:3.11-slim" in dockerfile
    assert re.search(r"^USER (?!0\b|root\b)", dockerfile, re.M)
    assert 'pip install -c constraints.txt ".[${EXTRAS}]"' in dockerfile
    roles = {}
    for name, service in services.items():
        build = service.get("build")
        if isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile":
            roles[name] = build["args"]["EXTRAS"]
    assert {roles["producer"], roles["dashboard"], roles["worker"]} <= set(roles.values())
    for name in ("producer", "dashboard", "worker", "actuator"):
        packages = base | _extra_packages(roles[name], optional)
        assert "torch" not in packages, f"{name} image would install torch"


# --- monitoring -----------------------------------------------------------------------------------


def _exported_names(metrics: WorkerMetrics) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + s for f in metrics.registry.collect() for s in suffixes[f.type]}


def test_dashboard_queries_use_exported_metrics_and_real_columns(services: dict[str, Any]) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "steel.json").read_text())
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    uids = {d["uid"] for d in provisioned["datasources"]}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [t["expr"] for p in panels for t in p["targets"] if "expr" in t]
    sqls = [t["rawSql"] for p in panels for t in p["targets"] if "rawSql" in t]
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} <= uids

    used = set(re.findall(r"\b(steel_\w+|nv_\w+)", " ".join(exprs)))
    exported = _exported_names(WorkerMetrics())
    assert used - TRITON_METRICS <= exported, sorted(used - TRITON_METRICS - exported)
    assert {"steel_worker_frames_total", "steel_worker_stage_seconds_bucket"} <= used
    # The lag panel asks for the group and topic the workers use; job names exist in prometheus.yml.
    env = _environment(services["worker"])
    lag = next(e for e in exprs if "kafka_consumergroup_lag" in e)
    assert (
        f'consumergroup="{env["STEEL_CONSUMER_GROUP"]}"' in lag
        and f'topic="{env["STEEL_FRAMES_TOPIC"]}"' in lag
    )
    jobs = {
        j["job_name"]
        for j in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert set(re.findall(r'job="([^"]+)"', " ".join(exprs))) <= jobs

    tables = {t.name: {c.name for c in t.columns} for t in TABLES}
    for sql in sqls:
        aliases = {
            alias or table: table for table, alias in re.findall(r"FROM (\w+)(?: (?!WHERE)(\w+))?", sql)
        }
        used_columns = re.findall(r"\$__time(?:GroupAlias|Filter)\((?:(\w+)\.)?(\w+)", sql)
        assert used_columns, sql
        for alias, column in used_columns:
            table = aliases[alias] if alias else next(iter(aliases.values()))
            assert column in tables[table], f"{table}.{column}"


# --- least privilege ------------------------------------------------------------------------------


def _k8s_commands(docs: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for doc, pod in _workloads(docs):
        for container in pod["containers"]:
            words = [*container.get("command", []), *container.get("args", [])]
            yield doc["metadata"]["name"], " ".join(words)


def test_no_secret_or_url_travels_on_a_command_line(
    services: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    """Arguments are visible to every local user (ps, /proc/PID/cmdline): URLs with passwords and
    passwords reach the product's commands through the environment only."""
    secret_ref = re.compile(r"\$\$?\{?(STEEL_\w*(URL|PASSWORD)\w*|\w*PASSWORD\w*)")
    for name, service in services.items():
        if service.get("image", "").startswith(("steel-", "redis:")) or "build" in service:
            words = " ".join(_command(service) + [str(e) for e in service.get("entrypoint") or []])
            # redis reads its own password file into its config file, not onto a command line.
            assert not secret_ref.search(words.replace("$$(cat /run/secrets/", "")), f"{name}: {words}"
    for name, words in _k8s_commands(k8s):
        if "redis-server" in words:
            continue  # the password goes into the config file (checked in redis.yaml's comment)
        assert not secret_ref.search(words), f"{name}: {words}"


def test_workers_log_in_as_the_writer_login_never_as_the_owner(
    services: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    from steelcore.postgres.roles import WORKER_ROLE

    logins = {
        where: urlsplit(_PLACEHOLDER.sub("secret", env["STEEL_POSTGRES_URL"])).username
        for role, env, where in _all_roles(services, k8s)
        if role == "work"
    }
    assert logins and set(logins.values()) == {WORKER_ROLE}, logins
    # Whoever creates the roles gives the worker login its password from the environment.
    migrations = [env for role, env, _ in _all_roles(services, k8s) if role == "migrate"]
    assert len(migrations) == 2 and all(env.get("STEEL_WORKER_DB_PASSWORD") for env in migrations)


# --- least privilege: the dashboard's Redis user, Kafka principals --------------------------------


def test_the_dashboard_gets_its_own_redis_user_never_the_default_one(
    services: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    from steelcore.redis.connection import DASHBOARD_REDIS_USER, dashboard_acl_rules

    dashboards = [(env, where) for role, env, where in _all_roles(services, k8s) if role == "dashboard"]
    assert len(dashboards) == 2
    for env, where in dashboards:
        assert "STEEL_REDIS_URL" not in env and "REDIS_PASSWORD" not in env, where
        url = urlsplit(_PLACEHOLDER.sub("secret", env["STEEL_DASHBOARD_REDIS_URL"]))
        assert url.username == DASHBOARD_REDIS_USER, where
    assert "redis-password" not in K8S.joinpath("dashboard.yaml").read_text()
    # Both Redis servers define that user with exactly the embedded server's rules.
    stream = _environment(services["worker"])["STEEL_ALARM_STREAM"]
    assert stream == one(k8s, "ConfigMap", "steel-config")["data"]["STEEL_ALARM_STREAM"]
    redis_pod = one(k8s, "StatefulSet", "steel-redis")["spec"]["template"]["spec"]["containers"][0]
    for where, script in (
        ("compose", " ".join(_command(services["redis"]))),
        ("k8s", " ".join(redis_pod["args"])),
    ):
        defined = re.findall(rf"user {DASHBOARD_REDIS_USER} reset on #%s ([^\\\n']+)", script)
        assert defined == [dashboard_acl_rules(stream, Settings().inspection_alarm_stream)], where
        assert "sha256sum" in script, where  # only the password's hash is in the config file
    assert "redis_dashboard_password" in services["redis"]["secrets"]
    assert any(e["name"] == "REDIS_DASHBOARD_PASSWORD" for e in redis_pod["env"])


def _role_acls(frames: str, truth: str, dead: str, group: str) -> dict[str, set[tuple[str, str, str]]]:
    """(resource type, name, operation) each role's principal is allowed: cameras write frames and
    truth, workers read frames in their group and write dead letters, the dashboard only describes."""
    return {
        "steel-producer": {
            ("topic", frames, "Write"),
            ("topic", frames, "Describe"),
            ("topic", truth, "Write"),
            ("topic", truth, "Describe"),
        },
        "steel-worker": {
            ("topic", frames, "Read"),
            ("topic", frames, "Describe"),
            ("group", group, "Read"),
            ("group", group, "Describe"),
            ("topic", dead, "Write"),
            ("topic", dead, "Describe"),
        },
        "steel-dashboard": {("topic", t, "Describe") for t in (frames, truth, dead)},
    }


def _acls(user: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(resource type, name, operation) of every ACL of a KafkaUser; only literal names allowed."""
    found = set()
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert resource.get("patternType", "literal") == "literal" and "*" not in resource["name"], acl
        assert acl.get("type", "allow") == "allow" and acl.get("host", "*") == "*", acl
        found |= {(resource["type"], resource["name"], op) for op in acl["operations"]}
    return found


def test_kafka_acls_per_principal_allow_each_role_only_what_it_does(k8s: list[dict[str, Any]]) -> None:
    kafka = one(k8s, "Kafka")["spec"]["kafka"]
    assert kafka["authorization"]["type"] == "simple"
    assert (
        "allow.everyone.if.no.acl.found" not in kafka["config"] and "superUsers" not in kafka["authorization"]
    )
    config = one(k8s, "ConfigMap", "steel-config")["data"]
    assert "STEEL_KAFKA_SASL_USERNAME" not in config  # no shared principal
    frames, truth, dead = (config[v] for v in TOPIC_VARS)
    group = config["STEEL_CONSUMER_GROUP"]
    users = {d["metadata"]["name"]: d for d in k8s if d["kind"] == "KafkaUser"}
    assert set(users) == {"steel-producer", "steel-worker", "steel-dashboard"}
    assert {name: _acls(user) for name, user in users.items()} == _role_acls(frames, truth, dead, group)

    # Each role logs in as its own principal, with that principal's password.
    expected = {"work": "steel-worker", "produce": "steel-producer", "dashboard": "steel-dashboard"}
    seen = set()
    for _, pod in _workloads(k8s):
        for container in pod["containers"]:
            role = _k8s_role(container)
            if role not in expected:
                assert not any("SASL" in e["name"] for e in container.get("env", [])), role
                continue
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["STEEL_KAFKA_SASL_USERNAME"]["value"] == expected[role]
            ref = env["STEEL_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (expected[role], "password")
            seen.add(role)
    assert seen == set(expected)
    # KEDA reads the group's lag as the workers' principal.
    auth = one(k8s, "TriggerAuthentication")["spec"]
    assert {r["name"] for r in auth["secretTargetRef"] if r["parameter"] == "password"} == {"steel-worker"}


# --- Kafka in compose: authentication and ACLs per principal ----------------------------------------

# The roles that talk to Kafka and their principals (the same names as the Kubernetes KafkaUsers).
KAFKA_PRINCIPALS = {"work": "steel-worker", "produce": "steel-producer", "dashboard": "steel-dashboard"}
IDEMPOTENT_WRITE = ("cluster", "kafka-cluster", "IdempotentWrite")


def _compose_acl_list() -> set[tuple[str, str, str, str]]:
    """(principal, resource type, name, operation) of every line of deploy/compose/kafka-acls.txt."""
    found = set()
    for line in KAFKA_ACLS_FILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        principal, kind, name, operations = line.split()
        assert kind in ("topic", "group", "cluster") and "*" not in name, line
        found |= {(principal, kind, name, op) for op in operations.split(",")}
    return found


def _by_principal(acls: set[tuple[str, str, str, str]]) -> dict[str, set[tuple[str, str, str]]]:
    grouped: dict[str, set[tuple[str, str, str]]] = {}
    for principal, *acl in acls:
        grouped.setdefault(principal, set()).add((acl[0], acl[1], acl[2]))
    return grouped


def _brokers(services: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        n: _environment(s)
        for n, s in services.items()
        if "broker" in _environment(s).get("KAFKA_PROCESS_ROLES", "")
    }


def _listeners(env: dict[str, str], key: str) -> dict[str, str]:
    """listener name -> host:port (or security protocol, for the protocol map)."""
    pairs = [item.split("://" if "://" in item else ":", 1) for item in env[key].split(",")]
    return {name: value for name, value in pairs}


def test_compose_brokers_authenticate_every_listener_and_authorize_by_acl(services: dict[str, Any]) -> None:
    brokers = _brokers(services)
    assert len(brokers) == 3
    client_ports = set()
    for name, env in brokers.items():
        protocols = _listeners(env, "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
        listeners = _listeners(env, "KAFKA_LISTENERS")
        assert set(protocols) == set(listeners), name
        # No PLAINTEXT (or TLS-only) listener anywhere: every connection authenticates.
        assert set(protocols.values()) <= {"SASL_PLAINTEXT", "SASL_SSL"}, f"{name}: {protocols}"
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "BROKER"
        assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
        # The services' listener takes SCRAM users only; the broker/controller listeners PLAIN, whose
        # only user is the broker principal (its JAAS config holds user_admin alone).
        assert env["KAFKA_LISTENER_NAME_CLIENT_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
        assert "ScramLoginModule" in env["KAFKA_LISTENER_NAME_CLIENT_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
        assert env["KAFKA_LISTENER_NAME_BROKER_SASL_ENABLED_MECHANISMS"] == "PLAIN"
        assert env["KAFKA_LISTENER_NAME_CONTROLLER_SASL_ENABLED_MECHANISMS"] == "PLAIN"
        assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == "PLAIN"
        assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == "PLAIN"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        assert env["KAFKA_SUPER_USERS"] == "User:admin"
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        advertised = _listeners(env, "KAFKA_ADVERTISED_LISTENERS")
        assert set(advertised) == {"CLIENT", "BROKER"}
        client_ports.add(advertised["CLIENT"])
        # No password in the broker's configuration (docker inspect): the PLAIN JAAS configs are
        # set by kafka-broker.sh from the secret file.
        assert not [k for k, v in env.items() if "password" in v.lower()], name
        assert not [k for k in env if k.endswith("PLAIN_SASL_JAAS_CONFIG")], name
        assert "kafka_admin_password" in services[name]["secrets"]
        assert "--command-config" in " ".join(services[name]["healthcheck"]["test"])
    script = _mounted_script(services["kafka-1"])
    assert set(re.findall(r"^export (KAFKA_\w+)=", script, re.M)) == {
        "KAFKA_LISTENER_NAME_BROKER_PLAIN_SASL_JAAS_CONFIG",
        "KAFKA_LISTENER_NAME_CONTROLLER_PLAIN_SASL_JAAS_CONFIG",
        # the CLIENT listener's TLS keystore (compose Kafka TLS: tests/unit/test_deploy_compose.py)
        "KAFKA_LISTENER_NAME_CLIENT_SSL_KEYSTORE_PASSWORD",
        "KAFKA_LISTENER_NAME_CLIENT_SSL_KEY_PASSWORD",
    }
    assert "$(cat /run/secrets/kafka_admin_password)" in script
    assert script.rstrip().endswith("exec /etc/kafka/docker/run")
    # Every compose client connects to the CLIENT listener, over SASL.
    for role, env, where in _compose_roles(services):
        if "kafka" in ROLE_NEEDS[role]:
            assert set(env["STEEL_KAFKA_URL"].split(",")) == client_ports, where
            assert env["STEEL_KAFKA_SECURITY_PROTOCOL"] in ("SASL_PLAINTEXT", "SASL_SSL"), where


def test_compose_kafka_clients_log_in_as_their_own_principal(services: dict[str, Any]) -> None:
    secrets = {name: s["environment"] for name, s in _compose_secrets(services).items() if "environment" in s}
    seen = set()
    for name, service in services.items():
        role = _compose_role(service)
        env = _environment(service)
        if role not in KAFKA_PRINCIPALS:
            assert "STEEL_KAFKA_SASL_USERNAME" not in env and "STEEL_KAFKA_SASL_PASSWORD" not in env, name
            continue
        principal = KAFKA_PRINCIPALS[role]
        assert env["STEEL_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert env["STEEL_KAFKA_SASL_USERNAME"] == principal, name
        # The password variable is the one kafka-init sets as that principal's password.
        (variable,) = re.findall(r"^\$\{([A-Z0-9_]+):\?", env["STEEL_KAFKA_SASL_PASSWORD"])
        assert secrets[_principal_secret(principal)] == variable, name
        # Its user and ACLs exist before it starts.
        assert service["depends_on"]["kafka-init"] == {"condition": "service_completed_successfully"}, name
        seen.add(role)
    assert seen == set(KAFKA_PRINCIPALS)
    # kafka-exporter: its own read-only principal, the password read from its secret file.
    exporter = services["kafka-exporter"]
    command = " ".join(_command(exporter))
    assert "--sasl.enabled" in command and "--sasl.mechanism=scram-sha512" in command
    assert "--sasl.username=steel-exporter" in command
    assert '--sasl.password="$$(cat /run/secrets/kafka_exporter_password)"' in command
    assert exporter["secrets"] == ["kafka_exporter_password", "kafka_ca"]


def _compose_secrets(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["secrets"]


def _principal_secret(principal: str) -> str:
    return f"kafka_{principal.removeprefix('steel-')}_password"


def test_compose_kafka_acls_per_principal_allow_each_role_only_what_it_does(
    services: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    from steelcore.kafka.client_config import producer_config

    env = _environment(services["worker"])
    frames, truth, dead = (env[v] for v in TOPIC_VARS)
    group = env["STEEL_CONSUMER_GROUP"]
    acls = _by_principal(_compose_acl_list())
    # The producers of cameras and workers (dead letters) are idempotent on a real Kafka, so those
    # two principals may also InitProducerId (IdempotentWrite on the cluster).
    assert producer_config(Settings(kafka_url="kafka-1:9092"))["enable.idempotence"] is True
    expected = _role_acls(frames, truth, dead, group)
    expected["steel-producer"].add(IDEMPOTENT_WRITE)
    expected["steel-worker"].add(IDEMPOTENT_WRITE)
    expected["steel-exporter"] = {("topic", t, "Describe") for t in (frames, truth, dead)} | {
        ("group", group, "Describe")
    }
    assert acls == expected
    # The same principals and ACLs as the Kubernetes KafkaUsers (where Strimzi runs the exporter),
    # apart from IdempotentWrite.
    users = {d["metadata"]["name"]: _acls(d) for d in k8s if d["kind"] == "KafkaUser"}
    assert {p: a - {IDEMPOTENT_WRITE} for p, a in acls.items() if p != "steel-exporter"} == users
    # kafka-init gets every principal's password and the broker principal's, as secrets.
    init = services["kafka-init"]
    assert set(init["secrets"]) == {"kafka_admin_password"} | {_principal_secret(p) for p in acls}
    assert _mounts(init)["/opt/steel/kafka-acls.txt"] == KAFKA_ACLS_FILE
    assert not [k for k, v in _environment(init).items() if "PASSWORD" in k or "password" in v.lower()]


def _kafka_init_env(tmp_path: Path, services: dict[str, Any]) -> dict[str, str]:
    """The environment to run deploy/compose/kafka-init.sh here: stub kafka-*.sh tools that record
    their arguments in tmp_path/calls, and secret files "pw-<secret name>" in tmp_path/secrets."""
    bin_dir, secrets = tmp_path / "bin", tmp_path / "secrets"
    bin_dir.mkdir()
    secrets.mkdir()
    for tool in ("kafka-topics.sh", "kafka-configs.sh", "kafka-acls.sh"):
        stub = bin_dir / tool
        stub.write_text(
            f'#!/bin/sh\nprintf "%s\\0" {tool} "$@" >> "{tmp_path}/calls"\necho >> "{tmp_path}/calls"\n'
        )
        stub.chmod(0o755)
    for secret in services["kafka-init"]["secrets"]:
        (secrets / secret).write_text(f"pw-{secret}")
    env = {k: v for k, v in _environment(services["kafka-init"]).items() if "${" not in v}
    return {
        **env,
        "FRAMES_RETENTION_MS": "86400000",
        "DEAD_LETTER_RETENTION_MS": "604800000",
        "PATH": os.environ["PATH"],
        "KAFKA_INIT_BIN": str(bin_dir),
        "KAFKA_INIT_SECRETS_DIR": str(secrets),
        "KAFKA_INIT_ACLS_FILE": str(KAFKA_ACLS_FILE),
        "TMPDIR": str(tmp_path),
    }


def _run_kafka_init(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["/bin/sh", str(COMPOSE_DIR / "kafka-init.sh")], env=env, capture_output=True)


def _option(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def test_kafka_init_creates_exactly_the_listed_users_and_acls(
    tmp_path: Path, services: dict[str, Any]
) -> None:
    assert _run_kafka_init(_kafka_init_env(tmp_path, services)).returncode == 0
    calls = [line.split("\0")[:-1] for line in (tmp_path / "calls").read_text().splitlines()]
    for args in calls:  # every call as the broker principal, on the BROKER listener
        (bootstrap,) = _option(args, "--bootstrap-server")
        assert bootstrap == _environment(services["kafka-init"])["KAFKA_ADMIN_BOOTSTRAP"]
        assert all(h.endswith(":19092") for h in bootstrap.split(","))
        (properties,) = _option(args, "--command-config")
        assert 'username="admin" password="pw-kafka_admin_password"' in Path(properties).read_text()
    created = {_option(a, "--topic")[0] for a in calls if a[0] == "kafka-topics.sh" and "--create" in a}
    assert created == {_environment(services["worker"])[v] for v in TOPIC_VARS}

    acls = _compose_acl_list()
    users = {
        _option(a, "--entity-name")[0]: _option(a, "--add-config")[0]
        for a in calls
        if a[0] == "kafka-configs.sh"
    }
    assert users == {
        p: f"SCRAM-SHA-512=[iterations=8192,password=pw-{_principal_secret(p)}]" for p, *_ in acls
    }
    made = set()
    for args in (a for a in calls if a[0] == "kafka-acls.sh" and "--add" in a):
        (principal,) = _option(args, "--allow-principal")
        assert _option(args, "--resource-pattern-type") == ["literal"] and _option(args, "--allow-host") == [
            "*"
        ]
        if "--cluster" in args:
            resource = ("cluster", "kafka-cluster")
        else:
            ((kind, name),) = [
                (k.strip("-"), _option(args, k)[0]) for k in ("--topic", "--group") if k in args
            ]
            resource = (kind, name)
        made |= {(principal.removeprefix("User:"), *resource, op) for op in _option(args, "--operation")}
    assert made == acls
    assert not [a for a in calls if "--remove" in a or "--deny-principal" in a]


def test_kafka_init_refuses_a_password_that_is_not_url_safe(tmp_path: Path, services: dict[str, Any]) -> None:
    env = _kafka_init_env(tmp_path, services)
    (tmp_path / "secrets" / "kafka_worker_password").write_text("a]b,password=x")
    result = _run_kafka_init(env)
    assert result.returncode != 0
    assert b"kafka_worker_password: empty or not URL-safe" in result.stderr
    # It stopped at that user: no ACL was added.
    assert not [line for line in (tmp_path / "calls").read_text().splitlines() if "kafka-acls.sh" in line]
