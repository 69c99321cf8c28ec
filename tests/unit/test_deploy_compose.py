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

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from steelcore.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


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
    assert _secret_names(compose["services"]["dashboard"]) == ["dashboard_password"]


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
