"""Fixtures of the fault-injection suite (marker ``faults``).

The session's embedded Kafka, Postgres and Redis (tests/conftest.py) are shared by the cases that
do not stop them; a case that stops or restarts a service gets a private one. Triton serves a
random-weights model (fault_model.py) from one server for the session; the Triton case restarts
it. Every case records what it measured with ``record_outcome``: the outcomes are written to
``<pytest basetemp>/fault-outcomes.json`` as they come and printed at the end of the run.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_model import write_tiny_repository
from fault_stack import FaultCase
from random_bundle import synthetic_frames
from running_server import running

from stack.service import free_port
from stack.triton_server import TritonServer

OUTCOMES = pytest.StashKey[list[dict[str, Any]]]()
OUTCOMES_PATH = pytest.StashKey[Path]()
OUTCOMES_FILE = "fault-outcomes.json"


@pytest.fixture(scope="session")
def fault_images() -> np.ndarray:
    return synthetic_frames(6, seed=3)


@pytest.fixture(scope="session")
def fault_triton(
    tmp_path_factory: pytest.TempPathFactory, fault_images: np.ndarray
) -> Iterator[TritonServer]:
    """Triton serving the tiny random model; only steel_ensemble and its parts are loaded."""
    repo = write_tiny_repository(tmp_path_factory.mktemp("fault-model"), fault_images)
    server = TritonServer(
        tmp_path_factory.mktemp("fault-triton"),
        repo,
        free_port(),
        free_port(),
        free_port(),
        extra_args=["--model-control-mode=explicit", "--load-model=steel_ensemble"],
    )
    yield from running(server, 240, "Triton serving the fault model")


@pytest.fixture()
def fault_case(
    tmp_path: Path,
    fault_images: np.ndarray,
    fault_triton: TritonServer,
    kafka_url: str,
    redis_url: str,
    postgres_url: str,
) -> Iterator[Callable[..., FaultCase]]:
    """A factory of FaultCases on the shared stack; keyword arguments replace a service (a private
    one) or set max_frame_bytes. Every case is torn down after the test, before private services
    requested earlier in the test's signature are stopped."""
    cases: list[FaultCase] = []

    def make(name: str, **overrides: Any) -> FaultCase:
        if not fault_triton.running():
            # It died in an earlier case (which reported it); the cases after it still deserve a server.
            warnings.warn(f"Triton had exited; restarting it (log {fault_triton.log_path})", stacklevel=2)
            fault_triton.stop()
            fault_triton.start(timeout_s=240)
        services = {
            "kafka_url": kafka_url,
            "redis_url": redis_url,
            "postgres_url": postgres_url,
            "triton_url": fault_triton.grpc_url,
        }
        services.update(overrides)
        root = tmp_path / name
        root.mkdir()
        case = FaultCase(name, root, fault_images, **services)
        cases.append(case)
        return case

    try:
        yield make
    finally:
        for case in cases:
            case.close()


@pytest.fixture()
def record_outcome(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[dict], None]:
    """Record the test's measured outcome beside its stated expectation (its docstring)."""
    outcomes = request.config.stash.setdefault(OUTCOMES, [])

    def record(outcome: dict[str, Any]) -> None:
        doc = textwrap.dedent(request.node.function.__doc__ or "").strip()
        entry = {"case": request.node.name, "expectation": " ".join(doc.split()), "outcome": outcome}
        outcomes.append(entry)
        path = tmp_path_factory.getbasetemp() / OUTCOMES_FILE
        request.config.stash[OUTCOMES_PATH] = path
        path.write_text(json.dumps(outcomes, indent=2, default=str) + "\n")
        print(f"\n{request.node.name}: {json.dumps(outcome, default=str)}")

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    outcomes = config.stash.get(OUTCOMES, [])
    if not outcomes:
        return
    terminalreporter.section("fault-injection outcomes")
    for entry in outcomes:
        terminalreporter.write_line(f"{entry['case']}:")
        for key, value in entry["outcome"].items():
            terminalreporter.write_line(f"    {key}: {value}")
    terminalreporter.write_line(f"(also in {config.stash[OUTCOMES_PATH]})")
