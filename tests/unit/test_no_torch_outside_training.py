"""Issue 15, item 4: producers, workers, the dashboard and the shared package import no torch, so
their images never need it (the networks and model bundles live in training/)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = ("steelcore", "producers", "workers", "dashboard")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        names += [info.name for info in pkgutil.walk_packages(root.__path__, f"{package}.")]
    # Alembic revisions are loaded by Alembic from files, not imported as modules.
    return [name for name in names if ".migrations" not in name]


def test_every_module_outside_training_imports_without_torch() -> None:
    modules = _modules()
    assert len(modules) > 50
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(name); break\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"{done.stdout.strip()} pulls torch"


@pytest.mark.parametrize("moved", ["steelcore.networks", "steelcore.model_bundle"])
def test_the_networks_and_bundles_are_not_in_the_shared_package(moved: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(moved)
