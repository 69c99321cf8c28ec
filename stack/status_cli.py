"""`steel status`: the health of each service (up/down, URL, pid, version, memory).

Exits 0 when every configured service is up; UNAVAILABLE when one is down or none is configured.
A configured service is an external one (its URL set in settings) or one `steel up` started.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from steelcore import exit_codes
from steelcore.service_health import Health
from steelcore.service_urls import ServiceUnavailableError
from steelcore.settings import Settings, get_settings


def add_run_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="state, logs and data of the embedded stack (default: STEEL_RUN_DIR or .steel-run)",
    )


def settings_for(args: argparse.Namespace, command: str, file: TextIO | None = None) -> Settings | None:
    """Settings with ``--run-dir`` applied, or None after printing why they are malformed (to
    ``file``, default stdout) as ``steel <command>: bad settings: ...``."""
    try:
        settings = get_settings()
    except ValueError as exc:  # pydantic's ValidationError: a malformed STEEL_* variable
        print(f"steel {command}: bad settings: {exc}", file=file)
        return None
    if args.run_dir is not None:
        settings = settings.model_copy(update={"run_dir": args.run_dir.resolve()})
    return settings


def health_table(rows: Sequence[Health], notes: dict[str, str] | None = None) -> str:
    """A fixed-width table of health lines; URLs are already redacted by Health."""
    notes = notes or {}
    header = f"{'service':<9} {'state':<6} {'where':<9} {'pid':>7} {'rss':>8}  {'version':<22} url / detail"
    lines = [header, "-" * len(header)]
    for h in rows:
        state = "up" if h.up else "down"
        where = "embedded" if h.embedded else "external"
        pid = str(h.pid) if h.pid is not None else "-"
        rss = f"{h.rss_bytes / 2**20:.0f} MB" if h.rss_bytes is not None else "-"
        tail = h.url or ""
        detail = "; ".join(x for x in (h.detail, notes.get(h.name, "")) if x)
        if detail:
            tail = f"{tail}  ({detail})" if tail else detail
        lines.append(f"{h.name:<9} {state:<6} {where:<9} {pid:>7} {rss:>8}  {h.version or '-':<22} {tail}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from stack.embedded_stack import EmbeddedStack

    if (settings := settings_for(args, "status")) is None:
        return exit_codes.BAD_INPUT
    stack = EmbeddedStack(settings)
    try:
        health = stack.status()
        configured = stack.configured(health)
    except ServiceUnavailableError as exc:
        print(f"steel status: {exc}")
        return exit_codes.UNAVAILABLE
    down = [h.name for h in configured if not h.up]
    if args.json:
        print(
            json.dumps(
                {
                    "run_dir": str(stack.run_dir),
                    "services": [h.to_json() for h in health],
                    "configured": [h.name for h in configured],
                    "down": down,
                },
                indent=2,
            )
        )
    else:
        print(f"run dir: {stack.run_dir}")
        print(health_table(health))
    if not configured:
        if not args.json:
            print("no service configured or running: start the embedded stack with `steel up`")
        return exit_codes.UNAVAILABLE
    if down:
        if not args.json:
            print(f"down: {', '.join(down)}")
        return exit_codes.UNAVAILABLE
    return exit_codes.OK
