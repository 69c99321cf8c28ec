"""`steel triton`: serve the model repository with the embedded Triton server until Ctrl-C / SIGTERM.

    steel triton                              # triton_models/ on 8000 (HTTP), 8001 (gRPC), 8002 (metrics)
    steel triton --grpc-port 9001 --check     # start, report readiness and startup time, stop

Exit codes: 0 stopped by SIGTERM (or --check passed), 130 stopped by Ctrl-C, 3 the repository is
missing or incomplete, 4 the embedded server cannot run on this machine (the message says how to
use an external server through STEEL_TRITON_URL), 1 the server failed or died.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from steelcore import exit_codes
from steelcore.settings import get_settings
from steelcore.triton.model_names import MANIFEST

_MODEL_FILE = re.compile(r'key:\s*"model_file"\s*value:\s*\{\s*string_value:\s*"([^"]+)"')
_VERSION = "1"


def repository_problems(repository: Path, models: list[str]) -> list[str]:
    """What stops ``repository`` from serving ``models``: missing folders, configs or exported files."""
    if not repository.is_dir():
        return [f"model repository {repository} does not exist"]
    problems = []
    if not (repository / MANIFEST).is_file():
        problems.append(f"{repository / MANIFEST} is missing: no model was exported into it")
    for name in models:
        if not (repository / name / "config.pbtxt").is_file():
            problems.append(f"{repository / name / 'config.pbtxt'} is missing")
    for config in sorted(repository.glob("*/config.pbtxt")):
        version = config.parent / _VERSION
        for model_file in _MODEL_FILE.findall(config.read_text()):
            if not (version / model_file).is_file():
                problems.append(f"{version / model_file} is missing")
        if 'backend: "python"' in config.read_text() and not (version / "model.py").is_file():
            problems.append(f"{version / 'model.py'} is missing")
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    s = get_settings()
    parser.add_argument(
        "--repository",
        type=Path,
        default=s.triton_repository,
        help=f"model repository (default {s.triton_repository})",
    )
    parser.add_argument(
        "--model", default=s.triton_model, help=f"model to wait for (default {s.triton_model})"
    )
    parser.add_argument("--http-port", type=int, default=s.triton_http_port)
    parser.add_argument("--grpc-port", type=int, default=s.triton_grpc_port)
    parser.add_argument("--metrics-port", type=int, default=s.triton_metrics_port)
    parser.add_argument(
        "--run-dir", type=Path, default=s.run_dir, help=f"work folder and log (default {s.run_dir})"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)"
    )
    parser.add_argument("--check", action="store_true", help="start, report readiness, then stop")


def run(args: argparse.Namespace) -> int:
    from stack.triton_errors import EmbeddedTritonUnavailableError, TritonError
    from stack.triton_server import TritonServer

    problems = repository_problems(args.repository, [args.model])
    if problems:
        print("steel triton: the repository cannot be served:\n  " + "\n  ".join(problems), file=sys.stderr)
        print(
            "Write it with `steel export --model default --format torchscript --repo triton_models`.",
            file=sys.stderr,
        )
        return exit_codes.BAD_INPUT

    server = TritonServer(
        args.run_dir,
        args.repository,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        wait_for=(args.model,),
    )
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start(args.timeout)
        except EmbeddedTritonUnavailableError as exc:
            print(f"steel triton: {exc}", file=sys.stderr)
            return exit_codes.UNAVAILABLE
        except (TritonError, OSError) as exc:
            print(f"steel triton: {exc}", file=sys.stderr)
            return exit_codes.INTERRUPTED if received else exit_codes.FAILURE
        print(
            f"Triton ready in {server.startup_s:.1f} s serving {args.repository}\n"
            f"  gRPC    {server.grpc_url}\n  HTTP    {server.http_url}\n  metrics {server.metrics_url}\n"
            f"  log     {server.log_path}",
            flush=True,
        )
        if args.check:
            return exit_codes.OK if server.ready() else exit_codes.FAILURE
        print("Ctrl-C or SIGTERM stops it.", flush=True)
        while not stop.wait(1.0):
            if not server.running():
                print(
                    f"steel triton: the server exited; log {server.log_path}:\n{server.log_tail()}",
                    file=sys.stderr,
                )
                return exit_codes.FAILURE
        return exit_codes.INTERRUPTED if received and received[0] == signal.SIGINT else exit_codes.OK
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
