"""What every fault case needs: its own topics, consumer group, alarm stream and database on the
shared (or a private) stack, `steel work` subprocesses, a camera producer, the reference actuator,
and the end-of-case audit that every produced frame is exactly one row or one dead letter.

Workers are real processes (`python -m steelcore.cli work`) configured only through STEEL_*
variables, so SIGKILL and SIGSTOP act on them exactly as they would in production. Their
Postgres URL carries DB_SECRET as its password (the embedded server trusts local connections
and ignores it) and their Redis URL the server's real password: the audit checks that neither
ever reaches a worker's output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from producers.camera_producer import CameraProducer
from producers.frame_sources import CameraSpec, LineGeometry, SourceFrame
from stack.service import free_port
from steelcore.kafka.client_config import admin_config, consumer_config
from steelcore.kafka.dead_letter import DLQ_HEADER_PREFIX
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.postgres import migrate
from steelcore.postgres.engine import create_db_engine
from steelcore.postgres.scratch import scratch_database
from steelcore.redis.connection import alarm_stream_from_settings
from steelcore.service_urls import write_stack
from steelcore.settings import Settings, reveal
from steelcore.worker_metrics import ERRORS_TOTAL, FRAMES_TOTAL, parse_metrics
from workers.actuator import RejectActuator, log_reject

REPO_ROOT = Path(__file__).resolve().parents[2]
DB_SECRET = "fault-db-secret-7Hq2xV"
WAIT_S = 120.0  # generous: the suite shares 2 cores with training runs
PARTITIONS = 2
BATCH_SIZE = 4
# librdkafka's default partitioner puts a camera's frames on crc32(camera id) % partitions: these
# names put the first two on different partitions of two (and the four on four different ones).
CAMERAS = ("upper", "lower", "top", "edge-r")
# Key of the advisory lock the alarm gate (install_alarm_gate) waits for.
GATE_LOCK_KEY = 0x5EE1_FA17
ACTUATOR_RECLAIM_MS = 2000
# librdkafka's own messages (connection refused while a broker restarts) go to logging, not stderr.
KAFKA_LOG = {"logger": logging.getLogger("librdkafka")}


def wait_until(
    predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S, poll_s: float = 0.1
) -> float:
    """Poll until ``predicate()``; returns the seconds waited. AssertionError naming ``what`` on timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


class CycledSource:
    """A camera that shows a few pre-rendered frames in turn (rendering costs more than a fault case)."""

    def __init__(self, spec: CameraSpec, images: np.ndarray) -> None:
        self.spec = spec
        self.images = images

    @property
    def count(self) -> int | None:
        return None

    def frame(self, index: int) -> SourceFrame:
        k = index % len(self.images)
        return SourceFrame(index, self.images[k], None, f"sample-{k}")


class WorkerProcess:
    """One `steel work` subprocess, its log file and its /metrics endpoint."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, metrics_port: int):
        self.name = name
        self.log_path = log_path
        self.metrics_port = metrics_port
        self.last_metrics: dict[str, float] = {}
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            self.last_metrics = parse_metrics(response.read().decode())
        return self.last_metrics

    def metric(self, sample: str) -> float:
        """A sample such as 'steel_worker_paused' or 'steel_worker_frames_total{outcome="stored"}';
        0 while the endpoint is not up yet."""
        try:
            return self.metrics().get(sample, 0.0)
        except OSError:
            return 0.0

    def wait_consuming(self, timeout_s: float = 60.0) -> None:
        wait_until(
            lambda: "consuming" in self.log() or not self.alive(), f"{self.name} to subscribe", timeout_s
        )
        assert self.alive(), f"{self.name} exited {self.proc.returncode}:\n{self.log()[-3000:]}"

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def freeze(self, timeout_s: float = 10.0) -> None:
        """SIGSTOP and wait until the kernel reports the process stopped: the signal is delivered
        asynchronously, and a consumer still running for a few milliseconds fetches what the test
        publishes next."""
        self.proc.send_signal(signal.SIGSTOP)

        def stopped() -> bool:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] == "T"

        wait_until(stopped, f"{self.name} to stop", timeout_s)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; the exit code (SIGKILL after timeout_s, and -9 is returned)."""
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)  # a stopped process would not see the SIGTERM
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)


class FaultCase:
    """One fault case's topics, group, stream, database, workers, producer and actuator."""

    def __init__(
        self,
        name: str,
        root: Path,
        images: np.ndarray,
        *,
        kafka_url: str,
        redis_url: str,
        postgres_url: str,
        triton_url: str,
        max_frame_bytes: int | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.images = images
        self.tag = uuid.uuid4().hex[:10]
        self.run_dir = root / "run"
        # Kafka through stack.json, as after `steel up`: steelcore.kafka.client_config then applies
        # the embedded broker's settings (short session timeout), exactly as a worker of `steel demo`
        # gets them.
        write_stack(self.run_dir, {"kafka": {"url": kafka_url}})
        self.server_url = postgres_url
        self._database = ExitStack()
        self.db_url_text = self._database.enter_context(scratch_database(postgres_url, "steel_fault"))
        self.db_url = make_url(self.db_url_text)
        migrate.upgrade(self.db_url_text)
        self.engine: Engine = create_db_engine(self.db_url_text)
        fields: dict[str, Any] = {
            "run_dir": self.run_dir,
            "kafka_url": None,
            "redis_url": redis_url,
            "postgres_url": self.db_url_text,
            "triton_url": triton_url,
            "triton_protocol": "grpc",
            "frames_topic": f"fault-frames-{self.tag}",
            "truth_topic": f"fault-truth-{self.tag}",
            "dead_letter_topic": f"fault-dlq-{self.tag}",
            "consumer_group": f"fault-workers-{self.tag}",
            "alarm_stream": f"steel:fault:{self.tag}",
            "alarm_channel": f"steel:fault:live:{self.tag}",
            "actuator_group": f"fault-actuators-{self.tag}",
            "frames_partitions": PARTITIONS,
            "topic_rotation_s": 0,  # one frames topic: the cases count messages on it
            # Every detected defect alarms, so the alarm path carries plenty of traffic.
            "alarm_min_probability": (0.0,) * 4,
            "alarm_min_area_px": (1,) * 4,
        }
        if max_frame_bytes is not None:
            fields["max_frame_bytes"] = max_frame_bytes
        self.settings = Settings(**fields)
        self.ensure_topics()
        self.workers: list[WorkerProcess] = []
        self.producer: CameraProducer | None = None
        run_start = datetime.now(UTC)
        geometry = LineGeometry(fps=10.0, speed_m_s=2.0, coil_length_m=20.0)
        self.sources = {
            cam: CycledSource(CameraSpec("LF", cam, geometry, run_start), images) for cam in CAMERAS
        }
        self.next_index = 0
        self.journal = root / "actuator.jsonl"
        self.actuator: RejectActuator | None = None
        self._actuator_thread: threading.Thread | None = None

    # --- Kafka ---------------------------------------------------------------------------------
    def ensure_topics(self) -> None:
        from confluent_kafka.admin import AdminClient

        s = self.settings
        admin = AdminClient(admin_config(s, KAFKA_LOG))
        ensure_topics(admin, [s.frames_topic, s.dead_letter_topic], PARTITIONS)

    def publish(self, frames_per_camera: int, cameras: Sequence[str] = CAMERAS[:2]) -> list[str]:
        """Publish the next frames of each camera; their frame ids. Asserts every delivery."""
        if self.producer is None:
            self.producer = CameraProducer(self.settings)
        ids = []
        for _ in range(frames_per_camera):
            index, self.next_index = self.next_index, self.next_index + 1
            for camera in cameras:
                source = self.sources[camera]
                ids.append(self.producer.publish(source, source.frame(index), datetime.now(UTC)).frame_id)
        stats = self.producer.flush(60.0)
        assert stats.ok, f"not every frame was delivered: {stats.to_json()}"
        return ids

    def read_topic(
        self, topic: str, expected: int, timeout_s: float = 30.0, linger_s: float = 1.0
    ) -> list[Any]:
        """Every message of ``topic``: partitions assigned directly (no group join), read until
        ``expected`` have come and then ``linger_s`` more, so an extra copy would be seen too."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(consumer_config(f"fault-reader-{uuid.uuid4().hex[:8]}", self.settings, KAFKA_LOG))
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
            out: list[Any] = []
            deadline = time.monotonic() + timeout_s
            linger_until: float | None = None
            while time.monotonic() < deadline and (linger_until is None or time.monotonic() < linger_until):
                out.extend(m for m in consumer.consume(64, 0.2) if m.error() is None)
                if linger_until is None and len(out) >= expected:
                    linger_until = time.monotonic() + linger_s
            return out
        finally:
            consumer.close()

    # --- workers -------------------------------------------------------------------------------
    def worker_env(self, name: str) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEEL_")}
        db_url = self.db_url.set(password=DB_SECRET).render_as_string(hide_password=False)
        env.update(
            {
                "STEEL_RUN_DIR": str(self.run_dir),
                "STEEL_REDIS_URL": reveal(s.redis_url) or "",
                "STEEL_POSTGRES_URL": db_url,
                "STEEL_TRITON_URL": s.triton_url or "",
                "STEEL_TRITON_PROTOCOL": "grpc",
                "STEEL_TRITON_TIMEOUT_S": "3",
                "STEEL_FRAMES_TOPIC": s.frames_topic,
                "STEEL_DEAD_LETTER_TOPIC": s.dead_letter_topic,
                "STEEL_CONSUMER_GROUP": s.consumer_group,
                "STEEL_ALARM_STREAM": s.alarm_stream,
                "STEEL_ALARM_CHANNEL": s.alarm_channel,
                "STEEL_FRAMES_PARTITIONS": str(PARTITIONS),
                "STEEL_TOPIC_ROTATION_S": "0",
                "STEEL_ALARM_MIN_PROBABILITY": json.dumps(list(s.alarm_min_probability)),
                "STEEL_ALARM_MIN_AREA_PX": json.dumps(list(s.alarm_min_area_px)),
                "STEEL_MAX_FRAME_BYTES": str(s.max_frame_bytes),
                "OMP_NUM_THREADS": "1",
                "PGAPPNAME": name,  # libpq: lets a test see which worker waits on a lock
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def start_worker(
        self,
        name: str,
        script: Path | None = None,
        extra_env: dict[str, str] | None = None,
        verbose: bool = False,
    ) -> WorkerProcess:
        """`steel work` (or ``script``, taking the same options and environment) as a subprocess;
        ``verbose``: `steel -v work`, debug logging (which must not reveal a secret either)."""
        port = free_port()
        options = [
            "--batch-size", str(BATCH_SIZE), "--batch-wait-ms", "100", "--max-backoff-s", "1",
            "--shutdown-grace-s", "10", "--metrics-port", str(port),
        ]  # fmt: skip
        cli = [sys.executable, "-m", "steelcore.cli", *(["-v"] if verbose else []), "work"]
        head = [sys.executable, str(script)] if script else cli
        env = {**self.worker_env(name), **(extra_env or {})}
        worker = WorkerProcess(name, head + options, env, self.root / f"{name}.log", port)
        self.workers.append(worker)
        return worker

    def finish_workers(self, alive: Sequence[WorkerProcess]) -> dict[str, Any]:
        """Check ``alive`` are still running, take their final metrics, stop them with SIGTERM
        (exit code 0 expected: batch finished, offsets committed) and check no secret was logged."""
        dead = [w.name for w in alive if not w.alive()]
        assert not dead, f"workers {dead} died: " + "\n".join(w.log()[-2000:] for w in alive)
        totals: Counter[str] = Counter()
        for w in alive:
            samples = w.metrics()
            for outcome in ("stored", "duplicate", "dead_lettered"):
                totals[outcome] += int(samples.get(f'{FRAMES_TOTAL}{{outcome="{outcome}"}}', 0))
            for key, value in samples.items():
                if key.startswith(ERRORS_TOTAL + "{") and value:
                    totals["errors:" + re.sub(r'.*stage="([^"]+)".*', r"\1", key)] += int(value)
        codes = {w.name: w.stop() for w in alive}
        assert all(code == 0 for code in codes.values()), f"exit codes {codes}"
        self.check_no_secret_logged()
        return {
            "workers_alive_at_end": len(alive),
            "worker_exit_codes": codes,
            "frames_stored_by_survivors": totals.pop("stored", 0),
            "duplicates_absorbed": totals.pop("duplicate", 0),
            "dead_lettered_by_survivors": totals.pop("dead_lettered", 0),
            "failed_attempts_by_stage": {k.removeprefix("errors:"): v for k, v in totals.items() if v},
        }

    def check_no_secret_logged(self) -> None:
        secrets = [DB_SECRET]
        redis_password = urlsplit(reveal(self.settings.redis_url) or "").password
        if redis_password:
            secrets.append(redis_password)
        for w in self.workers:
            output = w.log()
            for secret in secrets:
                assert secret not in output, f"{w.name} wrote a secret to its output ({w.log_path})"

    # --- actuator ------------------------------------------------------------------------------
    def start_actuator(self) -> None:
        stream = alarm_stream_from_settings(self.settings)
        self.actuator = RejectActuator(
            stream, self.settings.actuator_group, "actuator-1", log_reject(self.journal), ACTUATOR_RECLAIM_MS
        )
        self._actuator_thread = threading.Thread(
            target=self.actuator.run, kwargs={"block_ms": 200}, daemon=True
        )
        self._actuator_thread.start()

    def journal_ids(self) -> list[str]:
        if not self.journal.exists():
            return []
        return [json.loads(line)["alarm_id"] for line in self.journal.read_text().splitlines() if line]

    # --- database ------------------------------------------------------------------------------
    def scalar(self, sql: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())

    def stored(self) -> int:
        return self.scalar("SELECT count(*) FROM frames")

    def install_alarm_gate(self) -> None:
        """Make every worker's outbox step (marking alarms published: after the store and the
        alarm publish, before the offset commit) wait for GATE_LOCK_KEY while a test holds it."""
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE FUNCTION fault_alarm_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"PERFORM pg_advisory_xact_lock_shared({GATE_LOCK_KEY}); RETURN NULL; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER fault_alarm_gate BEFORE UPDATE ON alarms "
                    "FOR EACH STATEMENT EXECUTE FUNCTION fault_alarm_gate()"
                )
            )

    @contextmanager
    def gate_closed(self) -> Iterator[None]:
        """Hold the gate's lock (workers reaching their outbox step wait) until the block ends."""
        conn = self.engine.connect()
        try:
            conn.execute(text(f"SELECT pg_advisory_lock({GATE_LOCK_KEY})"))
            conn.commit()
            yield
        finally:
            conn.execute(text(f"SELECT pg_advisory_unlock({GATE_LOCK_KEY})"))
            conn.commit()
            conn.close()

    def waiting_at_gate(self) -> list[str]:
        """application_name (worker name) of the sessions waiting for the gate's lock."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                )
            )
            return sorted(r[0] for r in rows)

    # --- the audit -----------------------------------------------------------------------------
    def settle(self, rows: int, timeout_s: float = WAIT_S) -> float:
        """Wait until ``rows`` frames are stored, every alarm is marked published, acted on by the
        actuator and acknowledged (XPENDING 0); returns the seconds waited."""
        started = time.monotonic()
        wait_until(lambda: self.stored() >= rows, f"{rows} frames stored (have {self.stored()})", timeout_s)

        def alarms_done() -> bool:
            if self.scalar("SELECT count(*) FROM alarms WHERE published_at IS NULL"):
                return False
            with self.engine.connect() as conn:
                ids = {f"{f}:{c}" for f, c in conn.execute(text("SELECT frame_id, class_id FROM alarms"))}
            assert self.actuator is not None
            return (
                ids <= set(self.journal_ids())
                and self.actuator.stream.pending_count(self.settings.actuator_group) == 0
            )

        wait_until(alarms_done, "every alarm published, acted on and acknowledged", timeout_s)
        return time.monotonic() - started

    def audit(
        self,
        rows: Sequence[str],
        dead: dict[str, str] | None = None,
        lost: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Check every frame is exactly one row (``rows``) or one dead letter (``dead``: probe id ->
        regex its reason must match), ``lost`` frames are neither, and every alarm was delivered
        and acknowledged. Returns the measured numbers."""
        dead = dead or {}
        with self.engine.connect() as conn:
            stored = [r[0] for r in conn.execute(text("SELECT frame_id FROM frames"))]
            alarm_keys = {f"{f}:{c}" for f, c in conn.execute(text("SELECT frame_id, class_id FROM alarms"))}
            unpublished = conn.execute(
                text("SELECT count(*) FROM alarms WHERE published_at IS NULL")
            ).scalar_one()
        letters = self.read_topic(self.settings.dead_letter_topic, len(dead), timeout_s=30 if dead else 2)
        letter_ids = [dict(m.headers() or []).get("frame_id", b"?").decode() for m in letters]
        assert len(stored) == len(set(stored))
        missing, unexpected = sorted(set(rows) - set(stored)), sorted(set(stored) - set(rows))
        assert not missing and not unexpected, f"missing rows {missing[:5]}, unexpected rows {unexpected[:5]}"
        duplicated = [k for k, n in Counter(letter_ids).items() if n > 1]
        assert not duplicated, f"dead-lettered more than once: {duplicated}"
        assert set(letter_ids) == set(dead), f"dead letters {sorted(letter_ids)} != expected {sorted(dead)}"
        assert not set(stored) & set(letter_ids)
        for message, probe in zip(letters, letter_ids, strict=True):
            reason = dict(message.headers())[DLQ_HEADER_PREFIX + "reason"].decode()
            assert re.search(dead[probe], reason), (
                f"{probe}: reason {reason!r} does not match {dead[probe]!r}"
            )
        assert not set(lost) & (set(stored) | set(letter_ids))

        assert self.actuator is not None
        stream_ids = [
            f[b"alarm_id"].decode() for _, f in self.actuator.stream.client.xrange(self.settings.alarm_stream)
        ]
        journal = self.journal_ids()
        pending = self.actuator.stream.pending_count(self.settings.actuator_group)
        assert unpublished == 0, f"{unpublished} alarms never marked published"
        assert alarm_keys <= set(stream_ids), (
            f"alarms never on the stream: {sorted(alarm_keys - set(stream_ids))[:5]}"
        )
        assert set(stream_ids) <= alarm_keys, "the stream holds alarms of frames that were never stored"
        assert alarm_keys <= set(journal), (
            f"alarms the actuator never acted on: {sorted(alarm_keys - set(journal))[:5]}"
        )
        assert pending == 0, f"XPENDING {pending}"
        return {
            "frames_produced": len(rows) + len(dead) + len(lost),
            "frames_stored": len(stored),
            "dead_lettered": len(letters),
            "frames_lost": len(lost),
            "alarms": len(alarm_keys),
            "alarm_stream_entries": len(stream_ids),
            "alarms_republished": len(stream_ids) - len(set(stream_ids)),
            "actuator_actions": len(journal),
            "actuator_repeats": len(journal) - len(set(journal)),
            "xpending": pending,
        }

    def close(self) -> None:
        for w in self.workers:
            if w.alive():
                w.proc.send_signal(signal.SIGCONT)
                w.proc.kill()
                w.proc.wait(30)
        if self.actuator is not None:
            self.actuator.stop_event.set()
            if self._actuator_thread is not None:
                self._actuator_thread.join(10)
            self.actuator.stream.client.close()
        if self.producer is not None:
            self.producer.flush(5.0)
        self.engine.dispose()
        self._database.close()
