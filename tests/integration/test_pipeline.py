"""The main job end to end on the embedded stack: camera producer -> Tansu -> worker -> Triton -> Postgres
+ Redis. Every test uses its own topics, consumer group, alarm stream and database.

Expected results come from outside the worker: the frames are read back from Kafka, decoded with the
frame-message codec and sent to the same Triton ensemble with the Triton client; the database must
hold exactly what the ensemble answered, and alarms exactly what the rule selects from that answer.

Triton serves ``settings.triton_repository`` (the committed triton_models/ unless
STEEL_TRITON_REPOSITORY points elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import line_probes
import numpy as np
import pytest
import redis
from line_probes import committed_total, count, read_topic
from sqlalchemy import Engine, text
from worker_thread import WorkerThread

from producers.camera_producer import CameraProducer, publish_run
from producers.frame_sources import CameraSpec, LineGeometry, SyntheticSource
from producers.synthetic_camera import SyntheticCamera
from stack.service import free_port
from stack.triton_server import TritonServer
from steelcore import rle
from steelcore.frame_message import decode_frame, decode_image
from steelcore.kafka.client_config import admin_config, consumer_config, producer_config
from steelcore.kafka.dead_letter import DLQ_HEADER_PREFIX
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.service_urls import redis_url
from steelcore.settings import Settings, reveal
from steelcore.triton.ensemble_client import TritonEnsembleClient
from workers.worker_config import WorkerConfig

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 180.0  # inference runs on 2 shared CPU cores
wait_until = partial(line_probes.wait_until, timeout_s=WAIT_S)
# Workers here may be retrying an outage when asked to stop.
WORKER_STOP_S = 120.0
CONFIG = WorkerConfig(batch_size=4, batch_wait_s=0.2, backoff_initial_s=0.2, backoff_max_s=2.0)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture()
def settings(line_settings: Settings, triton: TritonServer) -> Settings:
    # line_settings has one frames topic (no rotation); rotation has tests of its own (test_topic_rotation).
    return line_settings.model_copy(update={"triton_url": triton.grpc_url, "triton_protocol": "grpc"})


# --- helpers -------------------------------------------------------------------------------------


def produce_synthetic(settings: Settings, frames: int, cameras: tuple[str, ...] = ("top", "bottom")):
    """Publish ``frames`` per camera as fast as possible; returns the sources and the run result."""
    from confluent_kafka.admin import AdminClient

    ensure_topics(AdminClient(admin_config(settings)), [settings.frames_topic, settings.truth_topic], 2)
    geometry = LineGeometry(fps=5.0, speed_m_s=2.0, coil_length_m=3.0)
    run_start = datetime.now(UTC)
    sources = [
        SyntheticSource(CameraSpec("L9", c, geometry, run_start), seed=k) for k, c in enumerate(cameras)
    ]
    result = publish_run(
        CameraProducer(settings), sources, frames=frames, stop=threading.Event(), realtime=False
    )
    assert result.stats.ok, result.stats
    return sources, result


def ensemble_answer(
    settings: Settings, messages: list[Any]
) -> dict[str, tuple[list[float], list[str], list[int]]]:
    """frame_id -> (probabilities, RLEs, pixel counts) of the ensemble for the frames as published."""
    frames = [decode_frame(m.value()) for m in messages]
    pixels = np.stack([decode_image(f) for f in frames])
    with TritonEnsembleClient(settings.triton_url or "", "grpc", settings.triton_model, 60.0) as client:
        result = client.infer(pixels)
    return {
        f.header.frame_id: (result.probs[i].tolist(), result.rles[i], result.pixel_counts[i].tolist())
        for i, f in enumerate(frames)
    }


def stream_alarm_ids(settings: Settings) -> list[str]:
    client = redis.Redis.from_url(redis_url(settings))
    try:
        return [fields[b"alarm_id"].decode() for _, fields in client.xrange(settings.alarm_stream)]
    finally:
        client.close()


# --- tests ---------------------------------------------------------------------------------------


def test_frames_become_exactly_the_ensembles_defects_and_the_rules_alarms(
    settings: Settings, engine: Engine
) -> None:
    sources, result = produce_synthetic(settings, frames=6)
    n = 2 * result.frames
    published = read_topic(settings, settings.frames_topic, n)
    assert len(published) == n
    expected = ensemble_answer(settings, published)
    detections = {
        (fid, k + 1): (probs[k], rles[k], counts[k])
        for fid, (probs, rles, counts) in expected.items()
        for k in range(4)
        if rles[k]
    }
    assert detections, "the served model detects nothing on these synthetic frames; the test needs some"
    # An alarm rule that splits the detections: area at least the median detected area.
    areas = sorted(area for _, _, area in detections.values())
    threshold = areas[len(areas) // 2]
    expected_alarms = {f"{fid}:{c}" for (fid, c), (_, _, area) in detections.items() if area >= threshold}
    settings = settings.model_copy(
        update={"alarm_min_probability": (0.0,) * 4, "alarm_min_area_px": (threshold,) * 4}
    )
    metrics_port = free_port()
    config = dataclasses.replace(CONFIG, metrics_port=metrics_port)

    with WorkerThread(settings, config, WORKER_STOP_S) as running:
        wait_until(lambda: count(engine, "SELECT count(*) FROM frames") >= n, what=f"{n} frames rows")
        wait_until(lambda: committed_total(settings) == n, timeout_s=30, what="offsets committed")
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert running.error is None

    with engine.connect() as conn:
        frame_ids = {r[0] for r in conn.execute(text("SELECT frame_id FROM frames"))}
        rows = conn.execute(text("SELECT * FROM defects"))
        defects = {(r.frame_id, r.class_id): r for r in rows}
        rows = conn.execute(text("SELECT frame_id, class_id, published_at FROM alarms"))
        db_alarms = {f"{r.frame_id}:{r.class_id}": r.published_at for r in rows}
    assert frame_ids == set(expected)
    assert set(defects) == set(detections)
    for key, (prob, code, pixels) in detections.items():
        row = defects[key]
        assert row.rle == code and row.area_px == pixels
        assert row.probability == pytest.approx(prob, abs=1e-6)
        ys, xs = np.nonzero(rle.decode(code))
        assert (row.bbox_x0, row.bbox_y0, row.bbox_x1, row.bbox_y1) == (
            xs.min(),
            ys.min(),
            xs.max(),
            ys.max(),
        )
    assert set(db_alarms) == expected_alarms and all(db_alarms.values())  # all marked published
    assert sorted(stream_alarm_ids(settings)) == sorted(expected_alarms)
    assert f'steel_worker_frames_total{{outcome="stored"}} {float(n)}' in scrape

    # Ground truth of every synthetic frame went to the truth topic, keyed by frame id.
    truths = read_topic(settings, settings.truth_topic, n)
    assert sorted(m.key().decode() for m in truths) == sorted(expected)
    for message in truths[:3]:
        record = json.loads(message.value())
        camera = next(s for s in sources if s.spec.camera_id == record["camera_id"])
        index = int(record["frame_id"].rsplit("-", 1)[1])
        masks = SyntheticCamera(seed=camera.camera.seed).frame(index).masks
        assert np.array_equal(rle.decode_stack(record["rles"]), masks)


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the worker handles it."""


class CrashAtCommit:
    """A real consumer whose first commit 'kills the process' (after the DB write and alarm publish)."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        raise SimulatedCrash("died before committing")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def test_a_batch_redelivered_after_a_crash_adds_no_rows_and_alarms_again(
    settings: Settings, engine: Engine
) -> None:
    from confluent_kafka import Consumer

    settings = settings.model_copy(
        update={"alarm_min_probability": (0.0,) * 4, "alarm_min_area_px": (1,) * 4}
    )
    _, result = produce_synthetic(settings, frames=4)
    n = 2 * result.frames
    crashing = CrashAtCommit(Consumer(consumer_config(settings.consumer_group, settings)))
    with WorkerThread(settings, CONFIG, WORKER_STOP_S, consumer=crashing) as first:
        first.thread.join(WAIT_S)
    assert isinstance(first.error, SimulatedCrash)
    stored_first = count(engine, "SELECT count(*) FROM frames")
    defects_first = count(engine, "SELECT count(*) FROM defects")
    alarms_first = stream_alarm_ids(settings)
    assert 0 < stored_first < n and committed_total(settings) == 0
    with engine.connect() as conn:
        before = set(conn.execute(text("SELECT defect_id, frame_id, class_id FROM defects")))

    with WorkerThread(settings, CONFIG, WORKER_STOP_S) as second:
        wait_until(lambda: committed_total(settings) == n, what="all offsets committed")
    assert second.error is None
    assert count(engine, "SELECT count(*) FROM frames") == n
    with engine.connect() as conn:
        after = set(conn.execute(text("SELECT defect_id, frame_id, class_id FROM defects")))
    assert before <= after  # the first worker's rows untouched (same defect ids), none written twice
    assert len({(f, c) for _, f, c in after}) == len(after)
    assert count(engine, "SELECT count(*) FROM alarms") == len(after) >= defects_first
    assert alarms_first, "no detections in the crashed batch; the alarm re-publish is not exercised"
    ids = stream_alarm_ids(settings)
    for alarm_id in alarms_first:
        assert ids.count(alarm_id) == 2  # published again on redelivery, recognisable by its id
    assert set(ids) == {f"{f}:{c}" for _, f, c in after}


def test_a_corrupt_frame_is_dead_lettered_and_processing_goes_on(settings: Settings, engine: Engine) -> None:
    from confluent_kafka import Producer

    produce_synthetic(settings, frames=2, cameras=("top",))
    coordinates: list[tuple[int, int]] = []
    producer = Producer(producer_config(settings))
    producer.produce(
        settings.frames_topic,
        value=b"\x00garbage from a foreign producer",
        key=b"top",
        headers=[("origin", b"test")],
        on_delivery=lambda err, msg: coordinates.append((msg.partition(), msg.offset())),
    )
    assert producer.flush(10) == 0 and len(coordinates) == 1
    time.sleep(0.002)  # a new run start, so the next run's frame ids differ
    produce_synthetic(settings, frames=4, cameras=("top",))

    with WorkerThread(settings, CONFIG, WORKER_STOP_S) as running:
        wait_until(lambda: committed_total(settings) == 7, what="all 7 messages committed")
    assert running.error is None
    assert count(engine, "SELECT count(*) FROM frames") == 6
    dead = read_topic(settings, settings.dead_letter_topic, 1)
    assert len(dead) == 1 and dead[0].value() == b"\x00garbage from a foreign producer"
    headers = {k: v.decode() for k, v in dead[0].headers()}
    assert "bad magic" in headers[DLQ_HEADER_PREFIX + "reason"]
    assert headers[DLQ_HEADER_PREFIX + "topic"] == settings.frames_topic
    partition, offset = coordinates[0]
    assert (int(headers[DLQ_HEADER_PREFIX + "partition"]), int(headers[DLQ_HEADER_PREFIX + "offset"])) == (
        partition,
        offset,
    )
    assert headers["origin"] == "test" and dead[0].key() == b"top"


def test_sigterm_mid_stream_commits_the_last_batch_and_exits_0(settings: Settings, engine: Engine) -> None:
    _, result = produce_synthetic(settings, frames=40, cameras=("top",))
    n = result.frames
    env = {
        **os.environ,
        "STEEL_RUN_DIR": str(settings.run_dir),
        "STEEL_FRAMES_TOPIC": settings.frames_topic,
        "STEEL_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
        "STEEL_CONSUMER_GROUP": settings.consumer_group,
        "STEEL_ALARM_STREAM": settings.alarm_stream,
        "STEEL_ALARM_CHANNEL": settings.alarm_channel,
        "STEEL_FRAMES_PARTITIONS": "2",
        "STEEL_TOPIC_ROTATION_S": "0",
        "STEEL_POSTGRES_URL": reveal(settings.postgres_url) or "",
        "STEEL_TRITON_URL": settings.triton_url or "",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("STEEL_KAFKA_URL", "STEEL_REDIS_URL"):
        env.pop(name, None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "steelcore.cli", "work", "--batch-size", "2"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: count(engine, "SELECT count(*) FROM frames") >= 2, what="the first frames stored")
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, output
    stored = count(engine, "SELECT count(*) FROM frames")
    assert stored < n, "the worker finished the stream before SIGTERM; the test needs it mid-stream"
    assert committed_total(settings) == stored  # every stored frame committed, nothing committed unstored
    assert "SIGTERM" in output and "stopped" in output


@pytest.mark.faults
def test_a_redis_outage_pauses_the_worker_holds_the_batch_and_resumes(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from stack.redis_server import RedisServer

    private = RedisServer(tmp_path / "redis-run", free_port())
    private.start(timeout_s=60)
    try:
        settings = settings.model_copy(
            update={
                "redis_url": private.url,
                "alarm_min_probability": (0.0,) * 4,
                "alarm_min_area_px": (1,) * 4,
            }
        )
        produce_synthetic(settings, frames=2)
        with WorkerThread(settings, CONFIG, WORKER_STOP_S) as running:
            wait_until(lambda: committed_total(settings) == 4, what="the first 4 frames committed")
            private.stop()
            time.sleep(0.002)  # a new run start, so the next run's frame ids differ
            produce_synthetic(settings, frames=3)
            metrics = running.worker.metrics
            wait_until(lambda: metrics.value("steel_worker_paused") == 1, what="the worker to pause")
            assert metrics.value("steel_worker_errors_total", {"stage": "alarm"}) > 0
            time.sleep(3.0)  # held: nothing past the outage is committed
            assert committed_total(settings) == 4
            private.start(timeout_s=60)
            wait_until(
                lambda: committed_total(settings) == 10, what="all 10 frames committed after the outage"
            )
            assert metrics.value("steel_worker_paused") == 0
        assert running.error is None
        assert count(engine, "SELECT count(*) FROM frames") == 10
        with engine.connect() as conn:
            stored = {f"{f}:{c}" for f, c in conn.execute(text("SELECT frame_id, class_id FROM alarms"))}
            unpublished = count(engine, "SELECT count(*) FROM alarms WHERE published_at IS NULL")
        assert set(stream_alarm_ids(settings)) == stored and unpublished == 0
    finally:
        private.stop()


def test_a_camera_whose_lamp_dims_raises_one_inspection_alarm_and_clears(
    settings: Settings, engine: Engine
) -> None:
    """Two cameras on one partition (so the worker sees each camera's frames in order); one dims to
    35% from its 16th frame to its 45th: that camera, and only it, gets one raise and one clear."""
    from confluent_kafka.admin import AdminClient

    from producers.frame_sources import GainChange
    from steelcore.redis.inspection_alarms import InspectionAlarms

    tag = uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={"drift_window_frames": 10, "inspection_alarm_stream": f"steel:inspection:{tag}"}
    )
    ensure_topics(AdminClient(admin_config(settings)), [settings.frames_topic, settings.truth_topic], 1)
    geometry = LineGeometry(fps=5.0, speed_m_s=2.0, coil_length_m=3.0)
    run_start = datetime.now(UTC)
    steady = SyntheticSource(CameraSpec("L9", "cam1", geometry, run_start), seed=0)
    dimmed = SyntheticSource(CameraSpec("L9", "cam2", geometry, run_start), seed=1)

    sources = [steady, GainChange(dimmed, gain=0.35, after=15, until=45)]
    frames = 75
    result = publish_run(
        CameraProducer(settings), sources, frames=frames, stop=threading.Event(), realtime=False
    )
    assert result.stats.ok, result.stats
    with WorkerThread(settings, CONFIG, WORKER_STOP_S) as worker:
        wait_until(
            lambda: count(engine, "SELECT count(*) FROM frames") == 2 * frames, what="every frame stored"
        )
        alarms = InspectionAlarms(redis.Redis.from_url(redis_url(settings)), settings.inspection_alarm_stream)
        wait_until(lambda: len(alarms.recent()) >= 2, timeout_s=30, what="the episode's raise and clear")
        time.sleep(1.0)  # anything more would be a duplicate
    assert worker.error is None
    entries = list(reversed(alarms.recent()))
    assert [(e["camera"], e["state"]) for e in entries] == [("L9/cam2", "raised"), ("L9/cam2", "cleared")]
    assert "brightness" in entries[0]["statistics"].split(",") and "darker" in entries[0]["message"]
    assert alarms.active() == {}
    assert (
        worker.worker.metrics.value(
            "steel_worker_inspection_alarms_total", {"camera": "L9/cam2", "state": "raised"}
        )
        == 1
    )
