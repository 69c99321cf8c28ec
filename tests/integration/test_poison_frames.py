"""Poison frames mixed into good ones, through two workers of one group on the embedded stack: every
good frame is stored, every poison frame is dead-lettered exactly once with its reason, every offset
is committed, and both workers are still running (issue 13, section 1).

Kafka, Postgres and Redis are the real embedded services; the model is replaced by an instant answer
("a class 3 defect on every frame", so every stored frame keeps its image and raises an alarm). Two
things the embedded services would not do by themselves are set up here:
- the workers' dead-letter producers refuse messages over 1,048,588 bytes, Kafka's default
  ``message.max.bytes`` (Tansu accepts any size), so a message near that size whose dead-letter
  headers push it over is refused as a real broker would refuse it;
- the test's database refuses positions of 1000 m or more (a CHECK constraint), so one frame that
  passes validation is refused by the database for its content.
A header key that is not UTF-8 is not among the poison here: confluent-kafka cannot produce one (it
sends a bytes key as its repr), so tests/unit/test_poison_messages.py covers that case.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from line_probes import count, read_topic
from sqlalchemy import Engine, text
from worker_thread import WorkerThread

from steelcore import rle
from steelcore.frame_message import MAGIC, FrameHeader, encode_frame, encode_image
from steelcore.kafka.client_config import admin_config, consumer_config, producer_config
from steelcore.kafka.dead_letter import DLQ_HEADER_PREFIX, FALLBACK_VALUE_BYTES, DeadLetterProducer
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.postgres import migrate
from steelcore.postgres.engine import create_db_engine
from steelcore.postgres.scratch import scratch_database
from steelcore.settings import Settings
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from steelcore.triton.inference_result import EnsembleResult
from workers.worker_config import WorkerConfig

pytestmark = pytest.mark.integration

CONFIG = WorkerConfig(batch_size=8, batch_wait_s=0.1, backoff_initial_s=0.2, backoff_max_s=1.0)
KAFKA_DEFAULT_MAX_BYTES = 1_048_588
WAIT_S = 60.0


class DefectEverywhere:
    """Answers a 500-pixel class 3 defect (probability 0.9) for every frame, at once."""

    def __init__(self) -> None:
        mask = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8)
        mask[10:20, 100:150] = 1
        self.rle = rle.encode(mask)

    def infer_async(self, frames: np.ndarray) -> Future[EnsembleResult]:
        n = len(frames)
        future: Future[EnsembleResult] = Future()
        future.set_result(
            EnsembleResult(
                np.tile(np.array([[0.1, 0.1, 0.9, 0.1]], np.float32), (n, 1)),
                np.tile(np.array([[0, 0, 500, 0]], np.int64), (n, 1)),
                [["", "", self.rle, ""] for _ in range(n)],
            )
        )
        return future

    def close(self) -> None:
        pass


@pytest.fixture()
def db_url(postgres_url: str) -> Iterator[str]:
    """Migrated, with a check the worker's own validation does not make (a row the database refuses)."""
    with scratch_database(postgres_url, "steel_poison") as url:
        migrate.upgrade(url)
        engine = create_db_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text("ALTER TABLE frames ADD CONSTRAINT test_position_limit CHECK (position_m < 1000)")
            )
        engine.dispose()
        yield url


@pytest.fixture()
def settings(line_settings: Settings) -> Settings:
    return line_settings


# --- the messages ------------------------------------------------------------------------------------

GOOD_IMAGE = encode_image(
    np.tile(np.linspace(40, 200, FRAME_WIDTH).astype(np.uint8), (FRAME_HEIGHT, 1)), "jpeg"
)


def header(frame_id: str, **changes: object) -> dict[str, Any]:
    data = FrameHeader(
        frame_id=frame_id, line_id="LP", camera_id="cam", coil_id="KP", position_m=1.0,
        captured_at=datetime.now(UTC), encoding="jpeg",
    ).to_json()  # fmt: skip
    data.update(changes)
    return data


def message(header_bytes: bytes, image: bytes = GOOD_IMAGE) -> bytes:
    return struct.pack(">4sI", MAGIC, len(header_bytes)) + header_bytes + image


def with_header(frame_id: str, **changes: object) -> bytes:
    return message(json.dumps(header(frame_id, **changes)).encode())


def poison_frames() -> dict[str, tuple[bytes, str]]:
    """key -> (value, what the dead-letter reason must contain)."""
    digits = json.dumps(header("position-400-digits")).replace(
        '"position_m": 1.0', '"position_m": ' + "7" * 400
    )
    return {
        "time-before-year-1": (
            with_header("p1", captured_at="0001-01-01T00:00:00+01:00"),
            "outside the years",
        ),
        "time-after-9999": (with_header("p2", captured_at="9999-12-31T23:59:59-01:00"), "outside the years"),
        "position-400-digits": (message(digits.encode()), "position_m must be <="),
        "position-1e39": (with_header("p4", position_m=1e39), "position_m must be <="),
        "nested-1000": (message(b'{"frame_id": ' + b"[" * 1000 + b"]" * 1000 + b"}"), "nested too deeply"),
        "schema-true": (with_header("p6", schema_version=True), "schema_version True"),
        "clock-ahead": (
            with_header("p7", captured_at=(datetime.now(UTC) + timedelta(days=1)).isoformat()),
            "ahead of the worker's clock",
        ),
        "refused-by-database": (with_header("p8", position_m=5000.0), "test_position_limit"),
        # Within a few hundred bytes of the broker's limit: the dead-letter headers push it over.
        "near-the-limit": (b"JUNK" + bytes(KAFKA_DEFAULT_MAX_BYTES - 150), "bad magic"),
        "not-a-frame": (b"not a frame at all", "bad magic"),
    }


def raw_with_jpeg_magic() -> bytes:
    pixels = np.full((FRAME_HEIGHT, FRAME_WIDTH), 120, np.uint8)
    pixels.flat[:4] = (0xFF, 0xD8, 0xFF, 0xE0)
    return encode_frame(
        FrameHeader("good-raw-magic", "LP", "cam", "KP", 2.0, datetime.now(UTC), encoding="raw"),
        pixels.tobytes(),
    )


def publish(settings: Settings, items: list[tuple[str, bytes, list]]) -> dict[int, int]:
    """Produce (key, value, headers); the next offset per partition, from the delivery reports."""
    producer = Producer(producer_config(settings, {"message.max.bytes": 4 * KAFKA_DEFAULT_MAX_BYTES}))
    ends: dict[int, int] = {}
    failed: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(str(err))
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for key, value, headers in items:
        producer.produce(
            settings.frames_topic, value=value, key=key.encode(), headers=headers, on_delivery=report
        )
    assert producer.flush(30) == 0 and not failed, failed
    return ends


def committed(settings: Settings) -> dict[int, int]:
    consumer = Consumer(consumer_config(settings.consumer_group, settings))
    try:
        tps = consumer.committed([TopicPartition(settings.frames_topic, p) for p in (0, 1)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps}


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {WAIT_S:.0f} s waiting for {what}"
        time.sleep(0.2)


def dead_letter_producer(settings: Settings, name: str) -> DeadLetterProducer:
    # As in InferenceWorker._setup_kafka, but the limit is Kafka's default, not max_frame_bytes + 64 KiB.
    producer = Producer(producer_config(settings, {"message.max.bytes": KAFKA_DEFAULT_MAX_BYTES}))
    return DeadLetterProducer(producer, settings.dead_letter_topic, name, 10.0, settings.max_frame_bytes)


def track_assignment(running: WorkerThread) -> list[int]:
    """The worker's current partitions, kept up to date from its rebalance callbacks (asking its
    consumer from this thread would wait for the worker's consume() call to return)."""
    worker = running.worker
    partitions: list[int] = []
    on_assign, on_revoke = worker._on_assign, worker._on_revoke

    def assign(consumer: Any, tps: list[TopicPartition]) -> None:
        partitions[:] = [tp.partition for tp in tps]
        on_assign(consumer, tps)

    def revoke(consumer: Any, tps: list[TopicPartition]) -> None:
        partitions.clear()
        on_revoke(consumer, tps)

    worker._on_assign, worker._on_revoke = assign, revoke  # type: ignore[method-assign]
    return partitions


def test_poison_frames_in_a_batch_of_good_ones_with_two_workers(settings: Settings, engine: Engine) -> None:
    ensure_topics(AdminClient(admin_config(settings)), [settings.frames_topic, settings.dead_letter_topic], 2)
    poison = poison_frames()
    good = {f"good-{k:02d}": with_header(f"good-{k:02d}", position_m=float(k)) for k in range(14)}
    good["good-raw-magic"] = raw_with_jpeg_magic()
    items: list[tuple[str, bytes, list]] = []
    for k, (key, value) in enumerate(good.items()):
        items.append((key, value, [("frame_id", key.encode())]))
        if k < len(poison):
            probe = list(poison)[k]
            items.append((probe, poison[probe][0], [("frame_id", probe.encode())]))

    workers = [
        WorkerThread(
            settings,
            CONFIG,
            60.0,
            inference=DefectEverywhere(),
            dead_letters=dead_letter_producer(settings, f"w{n}"),
        )
        for n in (1, 2)
    ]
    assigned = [track_assignment(w) for w in workers]
    with workers[0], workers[1]:
        wait_until(lambda: all(assigned[n] for n in (0, 1)), "each worker to be assigned a partition")
        ends = publish(settings, items)
        wait_until(
            lambda: {p: o for p, o in committed(settings).items() if p in ends} == ends,
            f"offsets {ends} committed",
        )
        letters = read_topic(settings, settings.dead_letter_topic, len(poison), WAIT_S, linger_s=2.0)
        alive = [w.thread.is_alive() for w in workers]
        handled = [
            sum(
                w.worker.metrics.value("steel_worker_frames_total", {"outcome": o})
                for o in ("stored", "dead_lettered")
            )
            for w in workers
        ]
    assert alive == [True, True] and [w.error for w in workers] == [None, None]
    assert all(n > 0 for n in handled), f"each worker handled frames of its partition: {handled}"

    stored = count(engine, "SELECT count(*) FROM frames")
    with engine.connect() as conn:
        stored_ids = set(conn.execute(text("SELECT frame_id FROM frames")).scalars())
        encodings = dict(conn.execute(text("SELECT frame_id, encoding FROM frame_images")).all())
    assert stored_ids == set(good) and stored == len(good)
    assert encodings["good-raw-magic"] == "raw" and encodings["good-00"] == "jpeg"
    assert count(engine, "SELECT count(*) FROM alarms WHERE published_at IS NULL") == 0

    by_key = {}
    for letter in letters:
        key = letter.key().decode()
        assert key not in by_key, f"{key} dead-lettered twice"
        by_key[key] = letter
    assert set(by_key) == set(poison)
    for probe, (_, reason) in poison.items():
        headers = dict(by_key[probe].headers())
        assert reason in headers[DLQ_HEADER_PREFIX + "reason"].decode(), (probe, headers)
    near = dict(by_key["near-the-limit"].headers())
    assert len(by_key["near-the-limit"].value()) == FALLBACK_VALUE_BYTES
    assert b"too large" in near[DLQ_HEADER_PREFIX + "cut"]
    assert int(near[DLQ_HEADER_PREFIX + "original_bytes"]) == len(poison["near-the-limit"][0])
