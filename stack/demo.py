"""`steel demo`: the whole product on one machine, with a live summary.

    steel demo                 # until Ctrl-C: stack, 2 cameras, 2 workers, actuator, dashboard
    steel demo --frames 40     # stop once 40 frames are stored; print a JSON summary
    steel demo --scene lifecycle  # drift, verdicts, candidate, shadow run, promotion (demo_scene.py)

It starts the embedded stack (`steel up`, Triton serving settings.triton_repository), brings the
database schema to head, creates the topics, then runs as child processes (logs in
run_dir/logs/NAME.log): the reject actuator (journal run_dir/rejects.jsonl), the workers (each
with a Prometheus port), the dashboard when it is installed, and one synthetic camera per
`steel produce` process. Unless --fps says otherwise, the cameras together offer 70% of what this
machine serves, from the last `steel bench pipeline` here or a probe of the Triton ensemble of a
few seconds at start (stack.demo_capacity); the demo prints what it chose and why. Every ~2 s it
prints frames produced / stored / dead-lettered, frames/s, defects per class, alarms, actuator
acks, camera-to-alarm latency, the live mean Dice against the ground truth on the truth topic,
and the broker's memory (stack/demo_summary.py says where each figure comes from).

Ctrl-C or SIGTERM stops everything in order: the cameras, then (after the workers have stored
what was produced, up to --drain-timeout-s; a second Ctrl-C skips the wait) the workers, which
finish and commit their batch, then the actuator and the dashboard; then `steel down` unless
--keep-stack. Exit 0 only when every frame produced was stored.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from stack import demo_scene_args
from stack.demo_capacity import DEFAULT_SHARE
from stack.demo_start import DemoStart
from stack.demo_stop import DemoStop
from steelcore import exit_codes
from steelcore.settings import Settings, get_settings

log = logging.getLogger("steel.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    s = get_settings()
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="stop once this many frames (all cameras) are produced and stored; print a JSON summary",
    )
    parser.add_argument(
        "--cameras", type=int, default=2, help="synthetic cameras, one process each (default 2)"
    )
    parser.add_argument("--workers", type=int, default=2, help="inference workers (default 2)")
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help=f"frames/s per camera (default: {100 * DEFAULT_SHARE:.0f}%% of what this machine serves, "
        f"from the last `steel bench pipeline` here or a probe of a few seconds at start; "
        f"settings.camera_fps {s.camera_fps:g} when neither answers)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="measure the capacity at start even when a `steel bench pipeline` result exists",
    )
    parser.add_argument("--line", default="L1", help="line id of the cameras (default L1)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic camera seed; camera k uses seed + k")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    parser.add_argument(
        "--keep-stack", action="store_true", help="leave the embedded stack running at the end"
    )
    parser.add_argument("--refresh-s", type=float, default=2.0, help="live summary period (default 2 s)")
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=60.0,
        help="on stop, how long the workers may take to store what was produced (default 60 s)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=900.0,
        help="with --frames: longest run before giving up (default 900 s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the final summary here")
    demo_scene_args.add_arguments(parser)


def check_arguments(args: argparse.Namespace) -> None:
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.cameras < 1 or args.workers < 1:
        raise ValueError(f"--cameras and --workers must be >= 1, got {args.cameras} and {args.workers}")
    if args.frames is not None and args.frames < args.cameras:
        raise ValueError(
            f"--frames {args.frames} gives some of the {args.cameras} cameras nothing to publish"
        )
    for name in ("fps", "refresh_s", "drain_timeout_s", "timeout_s"):
        value = getattr(args, name)
        if value is None and name == "fps":
            continue  # chosen from the machine's capacity
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    demo_scene_args.check_arguments(args)


def run(args: argparse.Namespace) -> int:
    try:
        check_arguments(args)
    except ValueError as exc:
        print(f"steel demo: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    if getattr(args, "scene", None) == "lifecycle":
        from stack.demo_scene import LifecycleScene

        return LifecycleScene(get_settings(), args).run()
    return Demo(get_settings(), args).run()


class Demo(DemoStart, DemoStop):
    """The demo's life: start (stack.demo_start), the live loop here, stop (stack.demo_stop)."""

    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        self.settings, self.args = settings, args
        self.run_dir = Path(settings.run_dir).resolve()
        self.log_dir = self.run_dir / "logs"
        self.journal = self.run_dir / "rejects.jsonl"
        self.stop = threading.Event()  # first Ctrl-C / SIGTERM: orderly stop
        self.hurry = threading.Event()  # second: skip the drain
        # In --frames mode stdout carries only the JSON summary.
        self.out: TextIO = sys.stderr if args.frames is not None else sys.stdout
        self.producers: list[Any] = []
        self.workers: list[Any] = []
        self.others: dict[str, Any] = {}
        self.summary: Any = None
        self.truth: Any = None
        self.stack: Any = None
        self.started = datetime.now(UTC)
        self.failure: str | None = None
        self.metrics_ports: list[int] = []
        self.metrics_urls: list[str] = []
        self.offer: Any = None  # stack.demo_capacity.Offer: the frames/s per camera, and why

    # --- life -----------------------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        code = exit_codes.OK
        final: dict[str, Any] | None = None
        try:
            code = self._start()
            if code == exit_codes.OK:
                self._loop()
        finally:
            try:
                final = self._shutdown()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        if final is not None:
            code = self._report(final, code)
        return code

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.hurry.set()
            print("\nsteel demo: stopping now (drain skipped)", file=self.out, flush=True)
        else:
            self.stop.set()
            print(
                f"\nsteel demo: {signal.Signals(signum).name}: stopping in order", file=self.out, flush=True
            )

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --- running --------------------------------------------------------------------------------
    def _loop(self) -> None:
        from stack.demo_summary import render

        began = time.monotonic()
        while not self.stop.wait(self.args.refresh_s):
            snapshot = self.summary.refresh()
            self._show(render(snapshot, title="steel demo"))
            dead = [c for c in [*self.workers, *self.others.values()] if not c.running]
            if dead:
                self.failure = "; ".join(
                    f"{c.name} exited with {c.returncode} (log {c.log_path}): {c.log_tail(3)}" for c in dead
                )
                self._say(f"steel demo: {self.failure}")
                return
            failed = [c for c in self.producers if c.returncode not in (None, 0)]
            if failed:
                self.failure = "; ".join(
                    f"{c.name} exited with {c.returncode} (log {c.log_path})" for c in failed
                )
                self._say(f"steel demo: {self.failure}")
                return
            if self.args.frames is not None:
                if all(c.returncode == 0 for c in self.producers) and snapshot.stored >= self._produced():
                    return
                if time.monotonic() - began > self.args.timeout_s:
                    self.failure = (
                        f"--frames {self.args.frames} not stored within {self.args.timeout_s:.0f} s"
                    )
                    self._say(f"steel demo: {self.failure}")
                    return

    def _show(self, block: str) -> None:
        if self.out.isatty():
            self.out.write("\x1b[H\x1b[2J" + block + "\n(Ctrl-C stops)\n")
        else:
            self.out.write(block + "\n")
        self.out.flush()

    def _produced(self) -> int:
        """Frames the cameras delivered: their own summaries once they exited, else the truth seen."""
        total = 0
        for child in self.producers:
            path = self.log_dir / f"{child.name}.json"
            if child.returncode is None or not path.is_file():
                return max(total, self.truth.seen if self.truth is not None else 0)
            total += int(json.loads(path.read_text())["delivery"]["frames_delivered"])
        return total

    def _truth_delivered(self) -> int | None:
        """Truth messages the cameras delivered, from their summaries; None while one has none."""
        total = 0
        for child in self.producers:
            path = self.log_dir / f"{child.name}.json"
            if child.returncode is None or not path.is_file():
                return None
            total += int(json.loads(path.read_text())["delivery"]["truth_delivered"])
        return total
