"""`steel down`: stop the embedded services under the run directory (from any process).

Stops in reverse start order (Triton, Redis, Postgres, Kafka), removes stale pidfiles left by
services that died, and forgets the recorded URLs. External services are never touched.
"""

from __future__ import annotations

import argparse

from stack.status_cli import add_run_dir_argument, settings_for
from steelcore import exit_codes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir_argument(parser)


def run(args: argparse.Namespace) -> int:
    from stack.embedded_stack import EmbeddedStack

    if (settings := settings_for(args, "down")) is None:
        return exit_codes.BAD_INPUT
    stack = EmbeddedStack(settings)
    report = stack.down()
    if report.stale_pidfiles:
        print(f"removed stale pidfiles of: {', '.join(report.stale_pidfiles)}")
    if report.stopped:
        print(f"stopped: {', '.join(report.stopped)}")
    else:
        print(f"nothing was running under {stack.run_dir}")
    return exit_codes.OK
