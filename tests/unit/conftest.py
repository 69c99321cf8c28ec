"""Fixtures of the deployment tests (test_deploy_*.py): the deploy/ files, parsed once per module."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploy_files import COMPOSE_FILE, K8S, MONITORING, load_kustomization


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """deploy/compose.yaml."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services of deploy/compose.yaml by name."""
    return compose["services"]


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    """Every object of deploy/k8s/kustomization.yaml."""
    return load_kustomization(K8S)


@pytest.fixture(scope="module")
def monitoring() -> list[dict[str, Any]]:
    """Every object of deploy/k8s/monitoring/kustomization.yaml."""
    return load_kustomization(MONITORING)
