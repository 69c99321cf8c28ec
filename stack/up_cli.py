"""`steel up`: start the embedded stack under the run directory and wait until each is healthy.

Services whose URL is set in settings are only health-checked. The started services run in
their own sessions and outlive this command; `steel down` stops them. Exits UNAVAILABLE (with
the failing service's log path) when a service cannot start or an external one does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys

from stack.status_cli import add_run_dir_argument, health_table, settings_for
from steelcore import exit_codes
from steelcore.service_urls import ServiceUnavailableError, stack_file

DEFAULT_TIMEOUT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir_argument(parser)
    parser.add_argument("--no-triton", action="store_true", help="start Kafka, Postgres and Redis only")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds each service may take to become healthy (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print(f"steel up: --timeout must be positive, got {args.timeout}", file=sys.stderr)
        return exit_codes.USAGE
    from stack.embedded_stack import EmbeddedStack

    if (settings := settings_for(args, "up", file=sys.stderr)) is None:
        return exit_codes.BAD_INPUT
    stack = EmbeddedStack(settings, include_triton=not args.no_triton)
    try:
        report = stack.up(timeout_s=args.timeout)
    except ServiceUnavailableError as exc:
        print(f"steel up: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE

    if args.json:
        print(
            json.dumps(
                {
                    "run_dir": str(stack.run_dir),
                    "ok": report.ok,
                    "services": [h.to_json() for h in report.health],
                    "started": report.started,
                    "adopted": report.adopted,
                    "skipped": report.skipped,
                    "failures": {name: str(exc) for name, exc in report.failures.items()},
                    "start_seconds": report.start_seconds,
                    "total_seconds": report.total_seconds,
                },
                indent=2,
            )
        )
    else:
        notes = {name: f"started in {s:.1f} s" for name, s in report.start_seconds.items()}
        notes.update({name: "already running" for name in report.adopted})
        print(f"run dir: {stack.run_dir}")
        print(health_table(report.health, notes))
        for name, reason in report.skipped.items():
            print(f"{name}: skipped: {reason}")
        print(f"total {report.total_seconds:.1f} s")
    for exc in report.failures.values():
        print(f"steel up: {exc}", file=sys.stderr)
    for h in report.health:
        if not h.embedded and not h.up:
            print(f"steel up: external {h.name} at {h.url} does not answer: {h.detail}", file=sys.stderr)
    if not report.ok:
        if report.started:
            print(
                f"steel up: stopped again what this run started: {', '.join(report.started)}", file=sys.stderr
            )
        return exit_codes.UNAVAILABLE
    if not args.json:
        print(f"recorded in {stack_file(stack.run_dir)}; stop with `steel down`")
    return exit_codes.OK
