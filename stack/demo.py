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
from steelcore import exit_codes
from steelcore.settings import Settings, get_settings

log = logging.getLogger("steel.demo")

WORKER_READY_TIMEOUT_S = 120.0
BENCH_RESULT = Path("bench-results") / "pipeline.json"  # `steel bench pipeline`, run from the same folder
PRODUCER_STOP_S = 30.0
WORKER_STOP_S = 90.0  # a worker finishes its batch (one Triton request on CPU) and commits
OTHER_STOP_S = 15.0


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


def frames_per_camera(total: int, cameras: int) -> list[int]:
    """``total`` frames split over ``cameras`` (the first ones take the remainder)."""
    return [total // cameras + (k < total % cameras) for k in range(cameras)]


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


class Demo:
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

    # --- start ----------------------------------------------------------------------------------
    def _start(self) -> int:
        from stack.embedded_stack import EmbeddedStack
        from steelcore.service_urls import ServiceUnavailableError

        self._say(f"steel demo: starting the stack under {self.run_dir} ...")
        self.stack = EmbeddedStack(self.settings)
        try:
            report = self.stack.up(timeout_s=120.0)
        except ServiceUnavailableError as exc:
            self._say(f"steel demo: {exc}")
            return exit_codes.UNAVAILABLE
        if not report.ok:
            for name, exc in report.failures.items():
                self._say(f"steel demo: {name} did not start: {exc}")
            for h in report.health:
                if not h.up:
                    self._say(f"steel demo: {h.name} at {h.url} is not up: {h.detail}")
            return exit_codes.UNAVAILABLE
        for name, reason in report.skipped.items():
            self._say(f"steel demo: {name} skipped: {reason}")
        if self.stop.is_set():
            return exit_codes.INTERRUPTED
        try:
            self._prepare_services()
        except Exception as exc:  # any failure to reach a service: reported, then everything stops
            self._say(f"steel demo: preparing the services failed: {type(exc).__name__}: {exc}")
            return exit_codes.UNAVAILABLE
        self.offer = self._choose_load()
        self._say(f"steel demo: {self.offer.note}")
        return self._start_children()

    def _choose_load(self) -> Any:
        """Frames/s per camera: --fps, else 70% of the capacity (stack.demo_capacity)."""
        from stack.demo_capacity import bench_capacity, choose_offer, measure_capacity
        from workers.worker_config import WorkerConfig

        a, s = self.args, self.settings
        capacity = None if a.probe else bench_capacity(BENCH_RESULT, a.workers, s.triton_repository)
        if a.probe or (capacity is None and a.fps is None):
            self._say("steel demo: measuring what this machine serves ...")
            try:
                capacity = measure_capacity(s, a.workers, WorkerConfig().batch_size)
            except Exception as exc:  # the demo still runs, at settings.camera_fps
                self._say(f"steel demo: capacity probe failed: {type(exc).__name__}: {exc}")
        return choose_offer(capacity, a.cameras, a.fps, fallback_fps=s.camera_fps)

    def _prepare_services(self) -> None:
        from stack.demo_summary import LiveSummary
        from stack.demo_truth import TruthReader
        from stack.service import free_port
        from steelcore.postgres.engine import create_db_engine
        from steelcore.postgres.migrate import upgrade
        from steelcore.redis.connection import redis_client
        from steelcore.service_urls import postgres_url

        s = self.settings
        url = postgres_url(s)
        logging.getLogger("alembic").setLevel(logging.WARNING)  # keep the terminal for the summary
        upgrade(url)
        self._ensure_topics()
        self.started = datetime.now(UTC)
        self.truth = TruthReader(s, self.args.line, int(self.started.timestamp() * 1000))
        self.truth.start()
        self.metrics_ports = [free_port() for _ in range(self.args.workers)]
        self.metrics_urls = [f"http://127.0.0.1:{p}/metrics" for p in self.metrics_ports]
        self.summary = LiveSummary(
            s,
            line_id=self.args.line,
            started=self.started,
            engine=create_db_engine(url),
            redis_client=redis_client(s, socket_timeout=5),
            truth=self.truth,
            metrics_urls=self.metrics_urls,
            journal=self.journal,
        )

    def _ensure_topics(self) -> None:
        """The dead-letter topic, and the frames and truth topics (with rotation: the current and
        next buckets, so the workers are assigned them when they first join)."""
        from producers.bucket_router import BucketRouter
        from steelcore.kafka.clients import new_admin
        from steelcore.kafka.topic_admin import ensure_topics
        from steelcore.kafka.topic_rotation import rotation_seconds

        s = self.settings
        admin = new_admin(s)
        ensure_topics(admin, [s.dead_letter_topic], s.frames_partitions)
        rotation = rotation_seconds(s)
        router = BucketRouter(
            s.frames_topic,
            s.truth_topic,
            rotation,
            lambda names: ensure_topics(admin, names, s.frames_partitions),
        )
        frames_topic, _ = router.route()
        if rotation == 0:
            ensure_topics(admin, [s.frames_topic, s.truth_topic], s.frames_partitions)
        self._say(
            f"steel demo: topics ready ({frames_topic}" + (f", {rotation:g} s buckets)" if rotation else ")")
        )

    def _start_children(self) -> int:
        from stack.demo_children import Child, wait_for_log

        a = self.args
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self.others["actuator"] = Child(
            "actuator", ["actuator", "--journal", str(self.journal)], self.log_dir
        )
        self.workers = [
            Child(f"worker-{k + 1}", ["work", "--metrics-port", str(port)], self.log_dir)
            for k, port in enumerate(self.metrics_ports)
        ]
        for child in [self.others["actuator"], *self.workers]:
            child.start()
        if self._dashboard_available() and not a.no_dashboard:
            env = {"STEEL_DASHBOARD_WORKER_METRICS_URLS": json.dumps(self.metrics_urls)}
            self.others["dashboard"] = Child("dashboard", ["dashboard"], self.log_dir, env)
            self.others["dashboard"].start()
            s = self.settings
            self._say(f"steel demo: dashboard on http://{s.dashboard_address}:{s.dashboard_port}")
        self._say(f"steel demo: waiting for {len(self.workers)} workers to join the group ...")
        not_ready = wait_for_log(self.workers, "assigned", WORKER_READY_TIMEOUT_S)
        if not_ready:
            self.failure = "; ".join(
                f"{c.name} did not join (log {c.log_path}): {c.log_tail(3)}" for c in not_ready
            )
            self._say(f"steel demo: {self.failure}")
            return exit_codes.UNAVAILABLE
        counts = frames_per_camera(a.frames, a.cameras) if a.frames is not None else [None] * a.cameras
        fps = self.offer.camera_fps
        for k, count in enumerate(counts):
            name = f"camera-{k + 1}"
            cli = ["produce", "--line", a.line, "--camera", f"cam{k + 1}", "--fps", f"{fps:g}"]
            cli += ["--seed", str(a.seed + k), "--json", str(self.log_dir / f"{name}.json")]
            cli += self._camera_args(k)
            if count is not None:
                cli += ["--frames", str(count)]
            child = Child(name, cli, self.log_dir)
            (self.log_dir / f"{name}.json").unlink(missing_ok=True)
            child.start()
            self.producers.append(child)
        self._say(
            f"steel demo: {a.cameras} cameras at {fps:g} frames/s each, {a.workers} workers; "
            f"logs in {self.log_dir}"
        )
        return exit_codes.OK

    def _camera_args(self, k: int) -> list[str]:
        """Extra `steel produce` options of camera k (0-based): none here; a scene dims one."""
        return []

    @staticmethod
    def _dashboard_available() -> bool:
        import importlib.util

        return importlib.util.find_spec("dashboard.launch") is not None

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

    # --- stop -----------------------------------------------------------------------------------
    def _shutdown(self) -> dict[str, Any] | None:
        """Stop children in order, collect the final summary, stop the stack; None if nothing ran."""
        for child in self.producers:
            child.stop(PRODUCER_STOP_S)
        final = None
        produced, stages = 0, {}
        if self.summary is not None:
            produced = self._produced()
            # The live Dice scores a stored frame once its truth has been read, and the truth reader
            # can be seconds behind the workers (each rebalance of its group waits 3 s on the
            # embedded broker): wait for the truth the cameras delivered too.
            truth = self._truth_delivered()
            deadline = time.monotonic() + self.args.drain_timeout_s
            workers_alive = any(w.running for w in self.workers)
            while workers_alive and not self.hurry.is_set() and time.monotonic() < deadline:
                stored = self.summary.refresh(produced).stored
                if stored >= produced and (truth is None or self.truth.seen >= truth):
                    break
                time.sleep(1.0)
            self.summary.refresh(produced)  # the workers' metrics, before they stop
            stages = self.summary.stage_seconds()
        for worker in self.workers:
            worker.terminate()  # all at once: they finish their batches in parallel
        worker_codes = {w.name: w.stop(WORKER_STOP_S) for w in self.workers}
        actuator = self.others.get("actuator")
        if actuator is not None and self.summary is not None:
            deadline = time.monotonic() + 10.0
            while actuator.running and not self.hurry.is_set() and time.monotonic() < deadline:
                latest = self.summary.refresh(produced)
                if latest.actuator_acks >= latest.alarms:
                    break
                time.sleep(0.5)
        for name in ("actuator", "dashboard"):
            if name in self.others:
                self.others[name].stop(OTHER_STOP_S)
        if self.summary is not None:
            snapshot = self.summary.refresh(produced)
            final = {
                **snapshot.to_json(),
                "frames_per_s": self.summary.throughput(),
                "frames_per_s_measured": "stored frames / (last stored_at - first captured_at)",
                "camera_to_alarm_measured": "Redis stream entry time (alarm published) - captured_at",
                "camera_to_actuator_measured": "actuator journal acted_at - captured_at",
                "defects_total": sum(snapshot.defects.values()),
                **self._offer_json(),
                "worker_stage_seconds": stages,
                "worker_exit_codes": worker_codes,
                "failure": self.failure,
                "run_dir": str(self.run_dir),
            }
        if self.truth is not None:
            self.truth.stop()
        if self.stack is not None and not self.args.keep_stack:
            self.stack.down()
            self._say("steel demo: stack stopped")
        return final

    def _offer_json(self) -> dict[str, Any]:
        if self.offer is None:
            return {}
        capacity = self.offer.capacity
        return {
            "offered_frames_per_s": self.offer.total_fps,
            "camera_fps": self.offer.camera_fps,
            "camera_fps_chosen": self.offer.chosen,
            "capacity_frames_per_s": capacity.frames_per_s if capacity is not None else None,
            "capacity_source": capacity.source if capacity is not None else None,
        }

    def _report(self, final: dict[str, Any], code: int) -> int:
        ok = self.failure is None and final["produced"] > 0 and final["stored"] == final["produced"]
        final["ok"] = ok
        text = json.dumps(final, indent=2, default=str)
        (self.run_dir / "demo-summary.json").write_text(text + "\n")
        if self.args.json is not None:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(text + "\n")
        if self.args.frames is not None:
            print(text, flush=True)
        else:
            from stack.demo_summary import Snapshot, render

            fields = {k: final[k] for k in Snapshot.__dataclass_fields__}
            self._say(render(Snapshot(**fields), title="steel demo: final"))
        if code != exit_codes.OK:
            return code
        if not ok:
            self._say(f"steel demo: stored {final['stored']} of {final['produced']} frames produced")
            return exit_codes.FAILURE
        return exit_codes.OK
