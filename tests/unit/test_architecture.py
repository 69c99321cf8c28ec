"""The tree's shape: one home per external system, a dashboard that reads through them, small modules.

These rules are what issue 15's redesign bought; each failure names the module that breaks one.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE_FOLDERS = (
    "steelcore",
    "producers",
    "workers",
    "dashboard",
    "training",
    "stack",
    "benchmarks",
    "scripts",
)
MAX_MODULE_LINES = 350

# The client library of each external system, the package that wraps it, and the modules that may
# import it besides: training writes config.pbtxt from Triton's protobuf schema, talking to no server.
SYSTEMS = {
    "confluent_kafka": ("steelcore/kafka/", set()),
    "redis": ("steelcore/redis/", set()),
    "tritonclient": ("steelcore/triton/", {"training/triton_config.py"}),
}


def _modules() -> Iterator[Path]:
    for folder in CODE_FOLDERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@functools.cache
def _nodes(path: Path) -> tuple[ast.AST, ...]:
    return tuple(ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in _nodes(path):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("library", sorted(SYSTEMS))
def test_only_the_system_package_imports_its_client_library(library: str) -> None:
    home, allowed = SYSTEMS[library]
    offenders = [
        _rel(p)
        for p in _modules()
        if library in {_top(n) for n in _imported(p)}
        and not _rel(p).startswith(home)
        and _rel(p) not in allowed
    ]
    assert offenders == [], f"{library} is imported outside {home}: {offenders}"


def test_sql_is_written_only_in_the_postgres_package() -> None:
    # Type annotations (Engine) and the error classes may be imported anywhere; building statements
    # or engines is the postgres package's job.
    building = {"text", "select", "insert", "update", "delete", "create_engine", "func", "and_", "or_"}
    offenders = []
    for path in _modules():
        if _rel(path).startswith("steelcore/postgres/"):
            continue
        for node in _nodes(path):
            if isinstance(node, ast.ImportFrom) and node.module and _top(node.module) == "sqlalchemy":
                used = {alias.name for alias in node.names} & building
                if used:
                    offenders.append(f"{_rel(path)}: {sorted(used)}")
    assert offenders == []


def test_dashboard_imports_no_worker_or_stack_module() -> None:
    offenders = [
        f"{_rel(p)} -> {name}"
        for p in sorted((ROOT / "dashboard").rglob("*.py"))
        for name in _imported(p)
        if _top(name) in {"workers", "stack"}
    ]
    assert offenders == []


def test_nothing_outside_the_dashboard_imports_it() -> None:
    # The dashboard shows what the rest produces; code that training or a worker needs from it
    # belongs in steelcore (as the retraining export moved there in session 8).
    offenders = [
        f"{_rel(p)} -> {name}"
        for p in _modules()
        if not _rel(p).startswith("dashboard/")
        for name in _imported(p)
        if _top(name) == "dashboard"
    ]
    assert offenders == []


def test_every_system_package_has_its_exceptions_under_the_root_error() -> None:
    from steelcore.errors import ExternalServiceError

    for system in ("postgres", "kafka", "redis", "triton"):
        module = __import__(f"steelcore.{system}.exceptions", fromlist=["*"])
        errors = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Exception)]
        own = [e for e in errors if e.__module__ == module.__name__]
        assert own, f"steelcore.{system}.exceptions defines no exception"
        assert all(issubclass(e, ExternalServiceError) for e in own), system


def test_no_module_outside_tests_is_over_the_size_limit() -> None:
    long = {
        _rel(p): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_every_module_the_readme_map_names_exists() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    tracked = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if ".venv" not in p.parts]
    missing = []
    for name in re.findall(r"`([\w/.*]+(?:\.py|/))`", section):
        pattern = re.escape(name.rstrip("/")).replace(r"\*", r"\w*")
        if not any(re.fullmatch(rf"(.*/)?{pattern}", path) for path in tracked):
            missing.append(name)
    assert missing == [], f"README's map names what the tree lacks: {missing}"
