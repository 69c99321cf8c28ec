"""Alarms at least once, end to end: the outbox relay, the stream trimmed only below what the
actuators acknowledged, and alarms whose Kafka batch is never redelivered.

The model is replaced by an instant answer that finds every class on every frame (so each frame
raises four alarms); Kafka, Postgres and Redis are the real embedded services, the worker runs
in-process (tests/worker_thread.py) and the actuator is the reference one, in a thread.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from worker_thread import WorkerThread

from producers.camera_producer import CameraProducer
from producers.frame_sources import CameraSpec, LineGeometry, SourceFrame
from stack.kafka_broker import KafkaBroker
from stack.service import free_port
from steelcore import rle
from steelcore.postgres import migrate
from steelcore.postgres.engine import create_db_engine
from steelcore.postgres.roles import WRITER_ROLE, ensure_roles
from steelcore.postgres.scratch import scratch_database
from steelcore.redis.alarm_stream import AlarmStream
from steelcore.redis.connection import alarm_stream_from_settings
from steelcore.service_urls import write_stack
from steelcore.settings import Settings
from steelcore.triton.inference_result import EnsembleResult
from workers.actuator import RejectActuator, log_reject
from workers.worker_config import WorkerConfig
from workers.worker_errors import BatchAbandonedError

pytestmark = pytest.mark.integration

CONFIG = WorkerConfig(batch_size=8, batch_wait_s=0.1, backoff_initial_s=0.2, backoff_max_s=0.5)
WORKER_STOP_S = 60.0
# Each class a small square in its own corner of the frame.
_MASKS = []
for _k in range(4):
    _mask = np.zeros((256, 1600), np.uint8)
    _mask[10 + 60 * _k : 30 + 60 * _k, 100 + 300 * _k : 120 + 300 * _k] = 1
    _MASKS.append(rle.encode(_mask))


class EveryClassInference:
    """Answers 'every class, certain' for every frame at once: four alarms per frame."""

    def infer_async(self, frames: np.ndarray) -> Future[EnsembleResult]:
        n = len(frames)
        future: Future[EnsembleResult] = Future()
        future.set_result(
            EnsembleResult(np.full((n, 4), 0.9, np.float32), np.full((n, 4), 400, np.int64), [_MASKS] * n)
        )
        return future

    def close(self) -> None:
        pass


class FlatSource:
    """A cheap camera: grey frames."""

    def __init__(self) -> None:
        self.spec = CameraSpec("LA", "cam", LineGeometry(4.0, 1.0, 100.0), datetime.now(UTC))

    @property
    def count(self) -> int | None:
        return None

    def frame(self, index: int) -> SourceFrame:
        return SourceFrame(index, np.full((256, 1600), 128, np.uint8), None, f"flat{index}")


def publish_frames(settings: Settings, n: int) -> None:
    producer, source = CameraProducer(settings), FlatSource()
    for index in range(n):
        producer.publish(source, source.frame(index), datetime.now(UTC))
    stats = producer.flush(30.0)
    assert stats.ok, stats


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - started


class Actuator:
    """The reference actuator in a thread, journal in a file; start and stop it at will."""

    def __init__(self, settings: Settings, journal: Path) -> None:
        self.settings, self.journal = settings, journal
        self.actuator: RejectActuator | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        stream = alarm_stream_from_settings(self.settings)
        self.actuator = RejectActuator(
            stream, self.settings.actuator_group, "actuator-1", log_reject(self.journal), reclaim_idle_ms=1000
        )
        self.thread = threading.Thread(target=self.actuator.run, kwargs={"block_ms": 200}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.actuator is not None and self.thread is not None:
            self.actuator.stop_event.set()
            self.thread.join(10)
            assert not self.thread.is_alive()
            self.actuator.stream.client.close()
            self.actuator = self.thread = None

    def ids(self) -> set[str]:
        if not self.journal.exists():
            return set()
        return {json.loads(line)["alarm_id"] for line in self.journal.read_text().splitlines() if line}


@pytest.fixture()
def db_url(postgres_url: str) -> Iterator[str]:
    """Migrated at once: worker_engine grants on the tables whether or not engine has run yet."""
    with scratch_database(postgres_url, "steel_alarms") as url:
        migrate.upgrade(url)
        yield url


def _settings(run_dir: Path, redis_url: str, db_url: str, **fields: object) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return Settings(
        run_dir=run_dir,
        kafka_url=None,  # through run_dir/stack.json: the embedded broker's client settings apply
        triton_url=None,
        redis_url=redis_url,
        postgres_url=db_url,
        frames_topic=f"aframes-{tag}",
        truth_topic=f"atruth-{tag}",
        dead_letter_topic=f"adlq-{tag}",
        consumer_group=f"aworkers-{tag}",
        alarm_stream=f"steel:alarms:{tag}",
        alarm_channel=f"steel:alarms:live:{tag}",
        actuator_group=f"aactuators-{tag}",
        frames_partitions=1,
        topic_rotation_s=0,
        alarm_min_probability=(0.5,) * 4,
        alarm_min_area_px=(1,) * 4,
        alarm_relay_interval_s=0.2,
        alarm_relay_min_age_s=1.0,
        **fields,
    )


def alarm_rows(engine: Engine) -> tuple[set[str], int]:
    """The alarm ids stored, and how many of them are still unpublished."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT frame_id, class_id, published_at FROM alarms")).all()
    return {f"{f}:{c}" for f, c, _ in rows}, sum(1 for *_, p in rows if p is None)


@pytest.mark.slow
def test_actuator_down_while_200_alarms_pass_a_small_stream_cap(
    stack_settings: Settings, kafka_url: str, redis_url: str, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    """The actuator group exists, the actuator is down while 50 frames raise 200 alarms against a
    stream cap of 20, then it comes back: every alarm row is acted on, nothing was trimmed
    unacknowledged, and once acknowledged the stream is cut back to the cap."""
    settings = _settings(stack_settings.run_dir, redis_url, db_url, alarm_stream_maxlen=20)
    actuator = Actuator(settings, tmp_path / "rejects.jsonl")
    actuator.start()  # creates the group, then goes away
    stream = alarm_stream_from_settings(settings)
    wait_until(lambda: stream.client.exists(settings.alarm_stream) == 1, 10, "the actuator group")
    actuator.stop()

    with WorkerThread(settings, CONFIG, WORKER_STOP_S, inference=EveryClassInference()) as running:
        publish_frames(settings, 50)
        wait_until(lambda: len(alarm_rows(engine)[0]) == 200, 60, "200 alarm rows")
        wait_until(lambda: alarm_rows(engine)[1] == 0, 30, "every alarm published")
        time.sleep(5 * settings.alarm_relay_interval_s)  # several trim passes while nobody reads
        assert stream.client.xlen(settings.alarm_stream) == 200, "unacknowledged alarms were trimmed"

        actuator.start()
        try:
            ids, _ = alarm_rows(engine)
            wait_until(lambda: ids <= actuator.ids(), 30, "the actuator to act on every alarm row")
            wait_until(
                lambda: stream.client.xlen(settings.alarm_stream) <= settings.alarm_stream_maxlen,
                10,
                "the acknowledged stream to be cut back to the cap",
            )
        finally:
            actuator.stop()
        metrics = running.worker.metrics
        assert metrics.value("steel_worker_alarms_trimmed_unacknowledged_total") == 0
        assert metrics.value("steel_worker_alarm_stream_trimmed_total") >= 180
    assert running.error is None
    stream.client.close()


@pytest.mark.slow
def test_alarm_stored_then_broker_restarted_before_the_commit_still_reaches_the_actuator(
    private_broker: KafkaBroker, redis_url: str, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    """A worker stores a frame and its alarms, cannot publish them (its Redis is unreachable) and
    is stopped, giving up its uncommitted batch; the memory broker restarts, so the batch is never
    redelivered. Another worker's outbox relay must still publish the stored alarms, and the
    actuator act on them."""
    run_dir = tmp_path / "run"
    write_stack(run_dir, {"kafka": {"url": private_broker.url}})
    settings = _settings(run_dir, redis_url, db_url)
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    unreachable = AlarmStream(nowhere, settings.alarm_stream, settings.alarm_channel, 1000)
    first = WorkerThread(
        settings,
        WorkerConfig(
            batch_size=8, batch_wait_s=0.1, backoff_initial_s=0.2, backoff_max_s=0.5, shutdown_grace_s=0
        ),
        WORKER_STOP_S,
        inference=EveryClassInference(),
        alarm_publisher=unreachable,
    )
    with first:
        publish_frames(settings, 1)
        wait_until(lambda: len(alarm_rows(engine)[0]) == 4, 60, "the frame's 4 alarms stored")
        time.sleep(0.5)  # a few failed publish attempts
    assert isinstance(first.error, BatchAbandonedError), first.error
    stored, unpublished = alarm_rows(engine)
    assert unpublished == 4

    process = private_broker.process()
    assert process is not None
    process.kill()
    process.wait(10)
    private_broker.start(timeout_s=60)  # a new, empty log: the batch is gone with the old one

    actuator = Actuator(settings, tmp_path / "rejects.jsonl")
    actuator.start()
    try:
        with WorkerThread(settings, CONFIG, WORKER_STOP_S, inference=EveryClassInference()) as second:
            wait_until(lambda: stored <= actuator.ids(), 20, "the stored alarms to reach the actuator")
            assert second.worker.metrics.value("steel_worker_alarms_relayed_total") == 4
        assert alarm_rows(engine)[1] == 0
    finally:
        actuator.stop()
    nowhere.close()


# --- the relay on its own ------------------------------------------------------------------------


@pytest.fixture()
def worker_engine(db_url: str) -> Iterator[Engine]:
    """The database as a worker login (member of steel_writer) sees it."""
    ensure_roles(db_url)
    login = f"relay_{uuid.uuid4().hex[:8]}"
    admin = create_db_engine(db_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE {login} LOGIN IN ROLE {WRITER_ROLE}"))  # a generated name
    eng = create_db_engine(make_url(db_url).set(username=login).render_as_string(hide_password=False))
    try:
        yield eng
    finally:
        eng.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP ROLE {login}"))
        admin.dispose()


def test_relay_publishes_stale_unpublished_alarms_once_each(
    redis_url: str, engine: Engine, worker_engine: Engine
) -> None:
    """Only alarms older than the relay's minimum age, only unpublished ones, and not a row another
    relay holds (FOR UPDATE SKIP LOCKED); each relayed alarm reads exactly like a direct one."""
    from steelcore.frame_message import FrameIdentity
    from steelcore.postgres.defect_writes import DefectStore
    from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord
    from workers.alarm_relay import AlarmRelay
    from workers.alarm_rules import AlarmRule, alarms_for_frame
    from workers.worker_metrics import WorkerMetrics

    now = datetime.now(UTC)
    rule = AlarmRule((0.5,) * 4, (1,) * 4)

    def frame(frame_id: str, raised_at: datetime, published: bool = False) -> tuple[FrameRecord, list]:
        captured = raised_at - timedelta(milliseconds=300)
        identity = FrameIdentity(frame_id, "L1", "C1", "K9", 12.5, captured)
        fired = alarms_for_frame(
            rule, identity, probabilities=[0.91234, 0.1, 0.1, 0.1], areas_px=[7, 0, 0, 0]
        )
        record = FrameRecord(
            frame_id=frame_id, line_id="L1", camera_id="C1", coil_id="K9", position_m=12.5,
            captured_at=captured, received_at=raised_at, model_name="m", model_version="1",
            defects=(DefectRecord(1, "11 7", 7, (0, 10, 0, 16), 0.91234),),
            alarms=tuple(
                AlarmRecord(a.class_id, a.probability, a.area_px, raised_at,
                            "1-1" if published else None, raised_at if published else None)
                for a in fired
            ),
        )  # fmt: skip
        return record, fired

    old_a, old_b, young, done = (
        frame("old-a", now - timedelta(seconds=60)),
        frame("old-b", now - timedelta(seconds=50)),
        frame("young", now),
        frame("done", now - timedelta(seconds=60), published=True),
    )
    DefectStore(engine).write_batch([r for r, _ in (old_a, old_b, young, done)])
    client = redis.Redis.from_url(redis_url)
    name = f"test:relay:{uuid.uuid4().hex[:8]}"
    stream = AlarmStream(client, name, name + ":live", maxlen=1000)
    metrics = WorkerMetrics()
    # As a worker relays in production: logged in with the writer role's narrow grants.
    relay = AlarmRelay(worker_engine, stream, metrics, min_age_s=5.0, batch=10)

    def on_stream() -> list[dict[str, str]]:
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(name)]

    with engine.connect() as other_relay:  # holds old-b's row as a concurrent relay pass would
        other_relay.execute(text("SELECT 1 FROM alarms WHERE frame_id = 'old-b' FOR UPDATE"))
        assert relay.relay() == 1
        other_relay.rollback()
    assert on_stream() == [a.to_fields() for a in old_a[1]]
    assert relay.relay() == 1
    assert relay.relay() == 0
    assert [e["alarm_id"] for e in on_stream()] == ["old-a:1", "old-b:1"]
    with engine.connect() as conn:
        marked = dict(conn.execute(text("SELECT frame_id, stream_entry_id FROM alarms")).all())
    entry_ids = [i.decode() for i, _ in client.xrange(name)]
    assert marked == {"old-a": entry_ids[0], "old-b": entry_ids[1], "young": None, "done": "1-1"}
    assert metrics.value("steel_worker_alarms_relayed_total") == 2
    client.delete(name)
    client.close()
