"""Model versions on the running line (issue 16): workers on a real Triton while the lifecycle CLI
(`steel models shadow|promote`, stack.model_lifecycle) changes who serves.

- A promotion while two workers run loses and duplicates nothing: every published frame is stored
  once, each with the version that judged it, both versions appear, and per camera the versions
  never go back (frames in flight finish on the version they started with).
- The shadow version judges its share of the frames production judged, stored apart in
  shadow_results and raising no alarm.
- A shadow version Triton does not serve costs the worker only counted failures.

Each test has its own topics, consumer group, alarm stream and database; the module's Triton serves
its own mutable copy of the committed repository (stack.triton_server), which the CLI rewrites.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import line_probes
import numpy as np
import pytest
import redis
from line_probes import committed_total, count
from sqlalchemy import Engine, text
from worker_thread import WorkerThread

from producers.camera_producer import CameraProducer, publish_run
from producers.frame_sources import CameraSpec, LineGeometry, SyntheticSource
from stack.triton_server import TritonServer
from steelcore.frame_message import decode_frame, decode_image
from steelcore.kafka.client_config import admin_config, consumer_config
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.postgres.model_registry import read_roles, shadow_pick
from steelcore.service_urls import redis_url
from steelcore.settings import Settings, reveal
from steelcore.triton.ensemble_client import TritonEnsembleClient
from workers.worker_config import WorkerConfig
from workers.worker_loop import InferenceWorker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 300.0  # two workers, a shadow and model loads share 2 CPU cores
wait_until = partial(line_probes.wait_until, timeout_s=WAIT_S)
WORKER_STOP_S = 120.0
CLI_TIMEOUT_S = 420.0  # exporting and loading a bundle's version on busy cores
CONFIG = WorkerConfig(batch_size=4, batch_wait_s=0.2, backoff_initial_s=0.2, backoff_max_s=2.0)
SHARE = 0.5
CAMERAS = ("top", "bottom")


@pytest.fixture()
def settings(line_settings: Settings, triton: TritonServer) -> Settings:
    return line_settings.model_copy(
        update={
            "triton_url": triton.grpc_url,
            "triton_protocol": "grpc",
            "triton_serving_repository": triton.repository,
            "model_roles_poll_s": 0.5,
            # Every detection alarms, so alarms exist to tell production's from (absent) shadow ones.
            "alarm_min_probability": (0.0,) * 4,
            "alarm_min_area_px": (1,) * 4,
        }
    )


# --- helpers -------------------------------------------------------------------------------------


def steel_models(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`steel models ARGS` as an operator runs it, against the test's database and Triton."""
    env = {
        **os.environ,
        "STEEL_RUN_DIR": str(settings.run_dir),
        "STEEL_POSTGRES_URL": reveal(settings.postgres_url) or "",
        "STEEL_TRITON_URL": settings.triton_url or "",
        "STEEL_TRITON_PROTOCOL": settings.triton_protocol,
        "STEEL_TRITON_SERVING_REPOSITORY": str(settings.triton_serving_repository),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "steelcore.cli", "models", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def read_frames(settings: Settings, count: int, timeout_s: float = 60.0) -> dict[str, np.ndarray]:
    """frame_id -> pixels of every frame published on the test's topic."""
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(f"reader-{uuid.uuid4().hex[:8]}", settings))
    consumer.subscribe([settings.frames_topic])
    out: dict[str, np.ndarray] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < count and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=64, timeout=0.5):
                if m.error() is None:
                    frame = decode_frame(m.value())
                    out[frame.header.frame_id] = decode_image(frame)
    finally:
        consumer.close()
    return out


def sources(settings: Settings, fps: float) -> list[SyntheticSource]:
    from confluent_kafka.admin import AdminClient

    ensure_topics(AdminClient(admin_config(settings)), [settings.frames_topic, settings.truth_topic], 2)
    geometry = LineGeometry(fps=fps, speed_m_s=2.0, coil_length_m=3.0)
    run_start = datetime.now(UTC)
    return [SyntheticSource(CameraSpec("L7", c, geometry, run_start), seed=k) for k, c in enumerate(CAMERAS)]


def shadow_metric(worker: InferenceWorker, outcome: str) -> float:
    return worker.metrics.value("steel_worker_shadow_frames_total", {"outcome": outcome})


def register(engine: Engine, version: int, bundle: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (version, bundle, registered_at, registered_by, input_shape, "
                "class_ids) VALUES (:v, :b, now(), 'test', '256x1600', '{1,2,3,4}')"
            ),
            {"v": version, "b": bundle},
        )


def set_role(engine: Engine, role: str, version: int, share: float | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_roles (role, version, share, since, set_by) "
                "VALUES (:r, :v, :s, now(), 'test')"
            ),
            {"r": role, "v": version, "s": share},
        )


# --- tests ---------------------------------------------------------------------------------------


def test_a_shadow_version_that_is_not_loaded_only_counts_failures(settings: Settings, engine: Engine) -> None:
    # First in the module: Triton still serves the committed repository, production = version 1.
    register(engine, 1, "default")
    register(engine, 9, "ghost")  # registered, never loaded into Triton
    set_role(engine, "production", 1, None)
    set_role(engine, "shadow", 9, 1.0)
    published = publish_run(
        CameraProducer(settings), sources(settings, 5.0), frames=4, stop=threading.Event(), realtime=False
    )
    n = published.frames * len(CAMERAS)

    with WorkerThread(settings, CONFIG, WORKER_STOP_S) as running:
        worker = running.worker
        wait_until(lambda: committed_total(settings) == n, what=f"{n} frames committed")
        assert worker.shadow is not None
        wait_until(lambda: shadow_metric(worker, "failed") == n, timeout_s=60, what="every shadow failure")
        assert worker.metrics.value("steel_worker_paused") == 0
        assert worker.metrics.value("steel_worker_errors_total", {"stage": "infer"}) == 0
    assert running.error is None
    with engine.connect() as conn:
        labels = set(conn.execute(text("SELECT model_name, model_version FROM frames")))
    assert labels == {("default", "1")}
    assert count(engine, "SELECT count(*) FROM frames") == n
    assert count(engine, "SELECT count(*) FROM shadow_results") == 0
    assert shadow_metric(worker, "stored") == 0


def test_a_promotion_while_two_workers_run_stores_every_frame_once_with_its_version(
    settings: Settings, engine: Engine
) -> None:
    shadow = steel_models(settings, "shadow", "synthetic", "--share", str(SHARE))
    assert shadow.returncode == 0, shadow.stdout + shadow.stderr
    roles = read_roles(engine)
    assert (roles.production, roles.shadow) == (1, 2)

    stop_producing = threading.Event()
    produced: list[int] = []
    producer = threading.Thread(
        target=lambda: produced.append(
            publish_run(
                CameraProducer(settings), sources(settings, 1.5), frames=None, stop=stop_producing
            ).frames
        ),
        daemon=True,
    )
    with (
        WorkerThread(settings, CONFIG, WORKER_STOP_S) as first,
        WorkerThread(settings, CONFIG, WORKER_STOP_S) as second,
    ):
        workers = (first.worker, second.worker)
        wait_until(lambda: all(w._assigned for w in workers), timeout_s=60, what="both workers assigned")
        producer.start()
        wait_until(lambda: count(engine, "SELECT count(*) FROM frames") >= 8, what="8 frames on version 1")
        promote = steel_models(settings, "promote", "--force", "--by", "switch-test")
        assert promote.returncode == 0, promote.stdout + promote.stderr
        wait_until(
            lambda: count(engine, "SELECT count(*) FROM frames WHERE model_version = '2'") >= 6,
            what="frames judged by the promoted version",
        )
        stop_producing.set()
        producer.join(60)
        assert produced, "the producer did not finish"
        n = produced[0] * len(CAMERAS)
        wait_until(lambda: committed_total(settings) == n, what=f"all {n} frames committed")
        for w in workers:
            assert w.shadow is not None and w.shadow.wait_idle(120), "the shadow did not catch up"
        shadow_counts = {
            o: sum(shadow_metric(w, o) for w in workers) for o in ("stored", "duplicate", "dropped", "failed")
        }
    assert first.error is None and second.error is None

    roles = read_roles(engine)
    assert (roles.production, roles.shadow) == (2, None)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT frame_id, camera_id, captured_at, model_name, model_version, class_probs FROM frames"
            )
        ).all()
        shadow_rows = conn.execute(text("SELECT frame_id, version, class_probs FROM shadow_results")).all()
        alarms = {f"{f}:{c}" for f, c in conn.execute(text("SELECT frame_id, class_id FROM alarms"))}
        alarmed_defects = count(
            engine,
            "SELECT count(*) FROM alarms a JOIN defects d USING (frame_id, class_id)",
        )

    # Every frame once, each labelled with the bundle of its version; both versions judged some.
    assert len(rows) == n == len({r.frame_id for r in rows})
    assert {(r.model_name, r.model_version) for r in rows} == {("default", "1"), ("synthetic", "2")}
    # Per camera (one partition, read in order) the switch happens once: never back to version 1.
    for camera in CAMERAS:
        versions = [
            r.model_version for r in sorted(rows, key=lambda r: r.captured_at) if r.camera_id == camera
        ]
        assert versions == sorted(versions), f"{camera}: versions go back and forth: {versions}"

    # The version stored is the one that answered: frames labelled 2 carry version 2's probabilities.
    pixels = read_frames(settings, n)
    second_half = [r for r in rows if r.model_version == "2"][:8]
    with TritonEnsembleClient(
        settings.triton_url or "", "grpc", "steel_cascade", 60.0, model_version="2"
    ) as c:
        answer = c.infer(np.stack([pixels[r.frame_id] for r in second_half]))
    assert answer.versions is not None and set(answer.versions.tolist()) == {2}
    np.testing.assert_allclose(
        np.array([r.class_probs for r in second_half]),
        answer.probs,
        atol=2e-3,
        err_msg="labelled 2, judged by?",
    )

    # The shadow: version 2 on its share of the frames version 1 judged, nothing else, no alarms.
    judged_by_1 = {r.frame_id for r in rows if r.model_version == "1"}
    picked = {f for f in judged_by_1 if shadow_pick(f, SHARE)}
    assert 0 < len(picked) < len(judged_by_1)
    assert {v for _, v, _ in shadow_rows} == {2}
    assert {f for f, _, _ in shadow_rows} <= picked
    assert len(shadow_rows) == shadow_counts["stored"] > 0
    assert (
        sum(shadow_counts.values()) - shadow_counts["duplicate"] <= len(picked) <= sum(shadow_counts.values())
    )
    production_probs = {r.frame_id: r.class_probs for r in rows}
    differs = [float(np.max(np.abs(np.array(p) - np.array(production_probs[f])))) for f, _, p in shadow_rows]
    assert max(differs) > 0.01, "the shadow answered exactly as production: was version 2 asked?"
    assert alarms and alarmed_defects == len(alarms)  # every alarm is a production defect
    stream = redis.Redis.from_url(redis_url(settings))
    try:
        entries = {fields[b"alarm_id"].decode() for _, fields in stream.xrange(settings.alarm_stream)}
    finally:
        stream.close()
    assert entries == alarms
