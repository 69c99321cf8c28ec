"""Topic rotation on the embedded broker: producers write 2-second buckets, workers consume their
share of them (no rebalance as buckets come and go), and the janitor deletes a bucket only once it
is closed and consumed by the group.

The model is replaced by an instant "no defect" answer (this is about the broker); Kafka, Postgres
and Redis are the real embedded services.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from line_probes import wait_until
from sqlalchemy import text
from worker_thread import WorkerThread

from benchmarks.broker_bench import BlankInference
from producers.camera_producer import CameraProducer, publish_run
from producers.frame_sources import CameraSpec, LineGeometry, SourceFrame
from steelcore.kafka.client_config import admin_config
from steelcore.kafka.consumed_buckets import deleter_from_settings
from steelcore.kafka.topic_rotation import bucket_number, is_closed
from steelcore.postgres import migrate
from steelcore.postgres.engine import create_db_engine
from steelcore.settings import Settings, reveal
from workers.worker_config import WorkerConfig

pytestmark = pytest.mark.integration

ROTATION_S = 2.0
GRACE_S = 0.5
CONFIG = WorkerConfig(batch_size=8, batch_wait_s=0.1, backoff_initial_s=0.2, backoff_max_s=1.0)


class FlatSource:
    """A cheap camera: grey frames, known (empty) truth."""

    def __init__(self, camera: str, fps: float) -> None:
        self.spec = CameraSpec("LR", camera, LineGeometry(fps, 1.0, 100.0), datetime.now(UTC))

    @property
    def count(self) -> int | None:
        return None

    def frame(self, index: int) -> SourceFrame:
        return SourceFrame(index, np.full((256, 1600), 128, np.uint8), ("",) * 4, f"flat{index}")


@pytest.fixture()
def settings(line_settings: Settings) -> Settings:
    return line_settings.model_copy(
        update={
            "topic_rotation_s": ROTATION_S,
            "topic_close_grace_s": GRACE_S,
            "topic_janitor_interval_s": 0.5,
        }
    )


def publish(settings: Settings, seconds: float, fps: float = 3.0) -> tuple[int, list[int]]:
    """Publish on the camera schedule for ``seconds``; the frames delivered and the buckets written."""
    producer = CameraProducer(settings)
    result = publish_run(
        producer, [FlatSource("c1", fps)], frames=math.ceil(seconds * fps), stop=threading.Event()
    )
    assert result.stats.ok, result.stats
    used = sorted(
        b for name in producer.router.used if (b := bucket_number(settings.frames_topic, name)) is not None
    )
    return result.stats.frames_delivered, used


def buckets(settings: Settings, topic: str) -> dict[int, int]:
    """Bucket -> partitions of the existing buckets of ``topic``."""
    from confluent_kafka.admin import AdminClient

    listed = AdminClient(admin_config(settings)).list_topics(timeout=10).topics
    return {
        b: len(md.partitions) for name, md in listed.items() if (b := bucket_number(topic, name)) is not None
    }


def wait_closed(settings: Settings, bucket_ids: list[int]) -> None:
    last = max(bucket_ids)
    time.sleep(max(0.0, (last + 1) * ROTATION_S + GRACE_S - time.time()) + 0.1)
    assert all(is_closed(b, ROTATION_S, GRACE_S, time.time()) for b in bucket_ids)


def janitor_checks(settings: Settings, seconds: float) -> list[str]:
    """What a janitor of the group deletes when it checks for ``seconds`` (> its retire delay)."""
    janitor = deleter_from_settings(settings, settings.consumer_group, ROTATION_S, "test")
    deleted: list[str] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            deleted += janitor.delete_consumed().deleted
            time.sleep(0.3)
    finally:
        janitor.close()
    return deleted


def stored(settings: Settings) -> int:
    engine = create_db_engine(reveal(settings.postgres_url) or "")
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM frames")).scalar_one())
    finally:
        engine.dispose()


def test_consumed_closed_buckets_are_deleted_and_unconsumed_ones_kept(settings: Settings) -> None:
    migrate.upgrade(reveal(settings.postgres_url) or "")
    produced, with_frames = publish(settings, seconds=3 * ROTATION_S)
    assert len(with_frames) >= 3
    written = buckets(settings, settings.frames_topic)
    assert set(with_frames) | {max(with_frames) + 1} <= set(written)  # the next bucket is created ahead
    assert all(written[b] == 2 for b in with_frames)  # with the partitions asked for
    wait_closed(settings, with_frames)

    # Nobody consumed them yet: the janitor keeps every frames bucket, however often it checks.
    deleted = janitor_checks(settings, seconds=3.0)
    assert not [name for name in deleted if bucket_number(settings.frames_topic, name) is not None]
    assert set(with_frames) <= set(buckets(settings, settings.frames_topic))

    with WorkerThread(settings, CONFIG, 60.0, inference=BlankInference()) as running:
        wait_until(lambda: stored(settings) == produced, 60, f"{produced} frames stored")
        # The worker's janitor proves the closed buckets consumed, drops them, then deletes them.
        wait_until(
            lambda: not set(with_frames) & set(buckets(settings, settings.frames_topic)),
            60,
            f"buckets {with_frames} deleted",
        )
        assert running.thread.is_alive()
    assert running.error is None
    assert stored(settings) == produced

    # More frames while no worker runs: their buckets close unconsumed and are kept.
    produced_later, unconsumed = publish(settings, seconds=1.0)
    assert produced_later > 0 and unconsumed
    wait_closed(settings, unconsumed)
    current = int(time.time() // ROTATION_S)
    janitor_checks(settings, seconds=3.0)
    assert set(unconsumed) <= set(buckets(settings, settings.frames_topic))
    # Truth buckets are kept two buckets back only, consumed or not.
    truth = buckets(settings, settings.truth_topic)
    assert truth and all(b > current - 3 for b in truth), (sorted(truth), current)


def test_two_workers_share_the_buckets_without_rebalancing_and_one_takes_over_from_the_other(
    settings: Settings,
) -> None:
    """Buckets come and go under the workers without a rebalance of the group (they subscribe to the
    membership topic only), and a worker that leaves hands its share of every bucket to the other."""
    migrate.upgrade(reveal(settings.postgres_url) or "")
    with WorkerThread(settings, CONFIG, 60.0, inference=BlankInference()) as first:
        with WorkerThread(settings, CONFIG, 60.0, inference=BlankInference()) as second:
            workers = [first.worker, second.worker]
            wait_until(lambda: all(len(w._members) == 1 for w in workers), 30, "a membership partition each")
            rebalances = [w._rebalances for w in workers]
            produced, used = publish(settings, seconds=3 * ROTATION_S)
            assert len(used) >= 3
            wait_until(lambda: stored(settings) == produced, 60, f"{produced} frames stored")
            # Every bucket was shared out: each worker holds its partition of the current buckets.
            assert all(w.consumer.assignment() for w in workers)
            assert [w._rebalances for w in workers] == rebalances
        wait_until(lambda: first.worker._members == {0, 1}, 30, "the first worker holding both partitions")
        more, _used = publish(settings, seconds=2 * ROTATION_S)
        wait_until(lambda: stored(settings) == produced + more, 60, f"{produced + more} frames stored")
        assert first.thread.is_alive() and second.error is None
    assert first.error is None
