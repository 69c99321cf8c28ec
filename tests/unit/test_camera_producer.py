"""CameraProducer and publish_run against a fake librdkafka producer (no broker)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from producers.camera_producer import CameraProducer, publish_run
from producers.frame_sources import CameraSpec, LineGeometry, SourceFrame
from steelcore.frame_message import decode_frame, decode_image
from steelcore.settings import Settings

T0 = datetime(2025, 5, 1, 6, 0, tzinfo=UTC)


class FakeError:
    def __str__(self) -> str:
        return "Local: Message timed out"


class FakeMessage:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def key(self) -> bytes:
        return self._key


class FakeProducer:
    """Queues produce() calls; poll/flush report them delivered unless the key is in ``fail``."""

    def __init__(self, fail: set[bytes] | None = None, queue_full_times: int = 0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.queue: list[tuple[Any, bytes]] = []
        self.fail = fail or set()
        self.queue_full_times = queue_full_times
        self.flushes = 0

    def produce(
        self, topic: str, *, value: bytes, key: bytes, on_delivery: Any, timestamp: int, headers: Any
    ):
        if self.queue_full_times:
            self.queue_full_times -= 1
            raise BufferError("Local: Queue full")
        self.sent.append(
            {"topic": topic, "value": value, "key": key, "timestamp": timestamp, "headers": headers}
        )
        self.queue.append((on_delivery, key))

    def poll(self, timeout: float = 0) -> int:
        served, self.queue = self.queue, []
        for callback, key in served:
            callback(FakeError() if key in self.fail else None, FakeMessage(key))
        return len(served)

    def flush(self, timeout: float = 0) -> int:
        self.flushes += 1
        self.poll()
        return 0


class ListSource:
    def __init__(self, camera: str, n: int, truth: bool = True) -> None:
        self.spec = CameraSpec("L1", camera, LineGeometry(1000.0, 1.0, 100.0), T0)
        self.n, self.truth = n, truth

    @property
    def count(self) -> int | None:
        return self.n

    def frame(self, index: int) -> SourceFrame:
        pixels = np.full((256, 1600), index % 256, np.uint8)
        truth = ("1 5", "", "", "") if self.truth else None
        return SourceFrame(index, pixels, truth, f"img{index}")


SETTINGS = Settings(frames_topic="frames-t", truth_topic="truth-t", topic_rotation_s=0)


def test_frames_are_keyed_by_camera_and_truth_by_frame_id() -> None:
    fake = FakeProducer()
    producer = CameraProducer(SETTINGS, encoding="png", producer=fake)
    result = publish_run(
        producer, [ListSource("top", 3), ListSource("side", 3)], frames=None, stop=threading.Event()
    )
    assert result.frames == 3 and result.stats.ok and result.stats.frames_delivered == 6
    frames = [m for m in fake.sent if m["topic"] == "frames-t"]
    truths = [m for m in fake.sent if m["topic"] == "truth-t"]
    assert len(frames) == len(truths) == 6
    for message, truth in zip(frames, truths, strict=True):
        decoded = decode_frame(message["value"])
        assert message["key"] == decoded.header.camera_id.encode()
        assert decode_image(decoded)[0, 0] == int(decoded.header.frame_id[-8:]) % 256  # png is lossless
        assert truth["key"] == decoded.header.frame_id.encode()
        record = json.loads(truth["value"])
        assert record["frame_id"] == decoded.header.frame_id and record["rles"] == ["1 5", "", "", ""]
        assert message["timestamp"] == int(decoded.header.captured_at.timestamp() * 1000)
    assert fake.flushes == 1


def test_a_failed_delivery_makes_the_run_fail() -> None:
    source = ListSource("top", 4, truth=False)
    fake = FakeProducer(fail={b"top"})
    result = publish_run(
        CameraProducer(SETTINGS, producer=fake), [source], frames=None, stop=threading.Event()
    )
    assert not result.stats.ok
    assert result.stats.frames_failed == 4 and result.stats.frames_delivered == 0
    assert "not delivered" in (result.stats.first_error or "")


def test_stop_ends_the_run_early_and_still_flushes() -> None:
    stop = threading.Event()
    fake = FakeProducer()
    producer = CameraProducer(SETTINGS, producer=fake)

    def on_frame(done: int) -> None:
        if done == 2:
            stop.set()

    result = publish_run(producer, [ListSource("top", 100)], frames=None, stop=stop, on_frame=on_frame)
    assert result.frames == 2 and result.stats.frames_sent == 2 and result.stats.ok
    assert fake.flushes == 1


def test_a_full_queue_is_waited_out_not_dropped() -> None:
    fake = FakeProducer(queue_full_times=3)
    result = publish_run(
        CameraProducer(SETTINGS, producer=fake), [ListSource("top", 2)], frames=None, stop=threading.Event()
    )
    assert result.stats.ok and result.stats.frames_delivered == 2


def test_realtime_frames_are_stamped_with_their_schedule() -> None:
    fake = FakeProducer()
    source = ListSource("top", 3)
    publish_run(CameraProducer(SETTINGS, producer=fake), [source], frames=3, stop=threading.Event())
    stamps = [decode_frame(m["value"]).header.captured_at for m in fake.sent if m["topic"] == "frames-t"]
    assert stamps == [source.spec.scheduled_at(i) for i in range(3)]


def test_frames_over_the_size_limit_are_refused() -> None:
    producer = CameraProducer(
        Settings(max_frame_bytes=1000, topic_rotation_s=0), encoding="raw", producer=FakeProducer()
    )
    with pytest.raises(ValueError, match="max_frame_bytes"):
        publish_run(producer, [ListSource("top", 1)], frames=1, stop=threading.Event(), realtime=False)


def test_with_rotation_messages_go_to_the_bucket_of_their_publish_time() -> None:
    from producers.bucket_router import BucketRouter

    now = [1000.0]
    created: list[list[str]] = []
    router = BucketRouter("frames-t", "truth-t", 10.0, created.append, clock=lambda: now[0])
    fake = FakeProducer()
    producer = CameraProducer(SETTINGS, producer=fake, router=router)
    source = ListSource("top", 3)
    for index, t in enumerate((1000.0, 1009.9, 1010.0)):
        now[0] = t
        producer.publish(source, source.frame(index), T0)
    assert [m["topic"] for m in fake.sent] == [
        "frames-t.100", "truth-t.100", "frames-t.100", "truth-t.100", "frames-t.101", "truth-t.101",
    ]  # fmt: skip
    # Each bucket is created with the next one before its first message; none twice.
    assert created == [
        ["frames-t.100", "truth-t.100", "frames-t.101", "truth-t.101"],
        ["frames-t.102", "truth-t.102"],
    ]
    assert router.used == {"frames-t.100", "truth-t.100", "frames-t.101", "truth-t.101"}


def test_rotation_is_on_by_default_for_the_embedded_broker_only() -> None:
    from steelcore.kafka.topic_rotation import rotation_seconds

    embedded = Settings(kafka_url=None)
    assert rotation_seconds(embedded) == embedded.embedded_topic_rotation_s > 0
    assert rotation_seconds(Settings(kafka_url="kafka-1:9092")) == 0
    assert rotation_seconds(Settings(kafka_url="kafka-1:9092", topic_rotation_s=60)) == 60
    assert rotation_seconds(Settings(kafka_url=None, topic_rotation_s=0)) == 0
