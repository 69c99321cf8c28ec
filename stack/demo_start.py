"""How `steel demo` starts (mixed into stack.demo.Demo, whose attributes it uses): the embedded
stack, the schema, the topics, the live summary's readers, then the actuator, workers, dashboard
and cameras as child processes, at a load chosen from this machine's capacity."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steelcore import exit_codes

WORKER_READY_TIMEOUT_S = 120.0
BENCH_RESULT = Path("bench-results") / "pipeline.json"  # `steel bench pipeline`, run from the same folder


def frames_per_camera(total: int, cameras: int) -> list[int]:
    """``total`` frames split over ``cameras`` (the first ones take the remainder)."""
    return [total // cameras + (k < total % cameras) for k in range(cameras)]


class DemoStart:
    """Demo._start and its parts."""

    settings: Any
    args: Any
    stop: Any
    run_dir: Path
    log_dir: Path
    journal: Path

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
        """Frames/s per camera: --fps, else 70% of the capacity with the cameras on this machine
        (stack.demo_capacity)."""
        from stack.demo_capacity import (
            bench_capacity,
            camera_seconds,
            choose_offer,
            measure_capacity,
            with_cameras,
        )
        from workers.worker_config import WorkerConfig

        a, s = self.args, self.settings
        capacity = None if a.probe else bench_capacity(BENCH_RESULT, a.workers, s.triton_repository)
        if a.probe or (capacity is None and a.fps is None):
            self._say("steel demo: measuring what this machine serves ...")
            try:
                capacity = measure_capacity(s, a.workers, WorkerConfig().batch_size)
            except Exception as exc:  # the demo still runs, at settings.camera_fps
                self._say(f"steel demo: capacity probe failed: {type(exc).__name__}: {exc}")
        if capacity is not None and capacity.frames_per_s > 0:  # not NaN either
            capacity = with_cameras(capacity, camera_seconds())
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
