"""The files under deploy/ as the deployment tests read them (compose, the kustomizations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from steelcore.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
MONITORING = K8S / "monitoring"


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of ``path``."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def load_kustomization(folder: Path) -> list[dict[str, Any]]:
    """Every object of the resources ``folder``'s kustomization.yaml lists."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs.extend(yaml_docs(folder / name))
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (named ``name``) among ``docs``; fails the test unless exactly one."""
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
