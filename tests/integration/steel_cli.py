"""`steel` run as a child process, the way an operator runs it, for the tests of whole commands
(`steel demo`, the lifecycle scene) on an embedded stack of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from stack.service import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def steel(env: Mapping[str, str], *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steelcore.cli", *args],
        env=dict(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def own_stack_env(run_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without service URLs, with ``run_dir`` and a free port for every embedded
    service, so the command starts a stack of its own; ``extra`` adds STEEL_* settings."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("STEEL_") and k.endswith("_URL"))}
    env.update(
        {
            "STEEL_RUN_DIR": str(run_dir),
            "STEEL_KAFKA_PORT": str(free_port()),
            "STEEL_POSTGRES_PORT": str(free_port()),
            "STEEL_REDIS_PORT": str(free_port()),
            "STEEL_TRITON_HTTP_PORT": str(free_port()),
            "STEEL_TRITON_GRPC_PORT": str(free_port()),
            "STEEL_TRITON_METRICS_PORT": str(free_port()),
            **extra,
            "OMP_NUM_THREADS": "1",
        }
    )
    return env
