"""Fakes of the worker's parts (consumer, inference, store, alarms, dead letters) and the frames they
carry, recording every call in one journal: the unit tests drive InferenceWorker's batch life with them."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import redis
from sqlalchemy.exc import OperationalError

from steelcore import rle
from steelcore.alarm_message import Alarm
from steelcore.frame_message import FrameHeader, encode_frame, encode_image
from steelcore.postgres.frame_records import FrameRecord, StoreResult
from steelcore.settings import Settings
from steelcore.triton.exceptions import TritonUnavailableError
from steelcore.triton.inference_result import EnsembleResult
from workers.alarm_rules import AlarmRule
from workers.frame_batch import Rejected, ValidFrame, build_records
from workers.worker_config import WorkerConfig
from workers.worker_loop import InferenceWorker

T0 = datetime(2025, 5, 1, 6, 0, tzinfo=UTC)
TOPIC = "frames"


# --- fakes ---------------------------------------------------------------------------------------


class FakeMessage:
    def __init__(
        self, value: bytes | None, partition: int, offset: int, key: bytes = b"cam", error: Any = None
    ):
        self._value, self._partition, self._offset, self._key, self._error = (
            value,
            partition,
            offset,
            key,
            error,
        )

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return self._key

    def headers(self) -> list[tuple[str, bytes]]:
        return [("frame_id", b"x")]

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> Any:
        return self._error


def frame_value(
    seq: int,
    pixels: np.ndarray | None = None,
    width: int = 1600,
    height: int = 256,
    captured_at: datetime | None = None,
) -> bytes:
    """A frame message; captured at T0 + seq seconds (long ago: late) unless captured_at says."""
    pixels = np.zeros((height, width), np.uint8) if pixels is None else pixels
    header = FrameHeader(
        frame_id=f"L1-cam-1-{seq:08d}",
        line_id="L1",
        camera_id="cam",
        coil_id="K1",
        position_m=float(seq),
        captured_at=captured_at or T0 + timedelta(seconds=seq),
        encoding="png",
        width=width,
        height=height,
    )
    return encode_frame(header, encode_image(pixels, "png"))


class Journal(list):
    """Order of the durable steps across all fakes."""


class FakeConsumer:
    def __init__(self, journal: Journal, messages: list[FakeMessage], partitions: Sequence[int] = (0, 1)):
        from confluent_kafka import TopicPartition

        self.journal = journal
        self.pending = list(messages)
        self.assigned = [TopicPartition(TOPIC, p) for p in partitions]
        self.paused: set[int] = set()
        self.commits: list[dict[tuple[str, int], int]] = []
        self.closed = False
        self.consumes = 0
        self.revoke: tuple[int, int] | None = None  # (at consume call number, partition)
        self.subscriptions: list[list[str]] = []
        self.cluster_id = "steel-first"  # what the broker answers; a restarted embedded broker has a new one
        self.seeks: list[tuple[int, int]] = []
        self.topics: dict[str, int] = {}  # what list_topics answers: name -> partitions
        self.positions: dict[tuple[str, int], int] = {}  # what position() answers; -1001 unknown
        self.assigns: list[list[tuple[str, int, int]]] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks
        self.subscriptions.append(list(topics))

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        self.consumes += 1
        if self.revoke is not None and self.revoke[0] == self.consumes:
            kept = [tp for tp in self.assigned if tp.partition != self.revoke[1]]
            self.callbacks["on_revoke"](self, self.assigned)
            self.callbacks["on_assign"](self, kept)
        out = [m for m in self.pending if m.partition() not in self.paused][:num_messages]
        for m in out:
            self.pending.remove(m)
        return out

    def assignment(self) -> list[Any]:
        return list(self.assigned)

    def assign(self, partitions: list[Any]) -> None:
        self.assigns.append([(tp.topic, tp.partition, tp.offset) for tp in partitions])
        self.assigned = list(partitions)
        self.paused = set()  # as with the eager protocol: a new assignment is not paused

    def unassign(self) -> None:
        self.assigned = []
        self.paused = set()

    def pause(self, partitions: list[Any]) -> None:
        self.journal.append("pause")
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[Any]) -> None:
        self.journal.append("resume")
        self.paused -= {tp.partition for tp in partitions}

    def commit(self, offsets: list[Any], asynchronous: bool) -> list[Any]:
        assert asynchronous is False
        self.journal.append("commit")
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})
        return offsets

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        return []

    def list_topics(self, timeout: float) -> Any:
        topics = {
            name: SimpleNamespace(partitions=dict.fromkeys(range(n)), error=None)
            for name, n in self.topics.items()
        }
        return SimpleNamespace(cluster_id=self.cluster_id, topics=topics)

    def position(self, partitions: list[Any]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [
            TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]

    def seek(self, partition: Any) -> None:
        self.journal.append("seek")
        self.seeks.append((partition.partition, partition.offset))

    def close(self) -> None:
        self.closed = True


class FakeInference:
    """Answers every frame with class 3 defect of a fixed rectangle; fails the first ``failures`` calls."""

    def __init__(self, journal: Journal, failures: int = 0, prob: float = 0.9) -> None:
        self.journal, self.failures, self.prob, self.calls = journal, failures, prob, 0
        mask = np.zeros((256, 1600), np.uint8)
        mask[10:20, 100:150] = 1  # 500 px
        self.rle = rle.encode(mask)

    def infer_async(self, frames: np.ndarray) -> Future[EnsembleResult]:
        self.calls += 1
        future: Future[EnsembleResult] = Future()
        if self.failures:
            self.failures -= 1
            self.journal.append("infer-failed")
            future.set_exception(TritonUnavailableError("connection refused"))
            return future
        self.journal.append("infer")
        n = frames.shape[0]
        probs = np.tile(np.array([[0.1, 0.2, self.prob, 0.05]], np.float32), (n, 1))
        counts = np.tile(np.array([[0, 0, 500, 0]], np.int64), (n, 1))
        future.set_result(EnsembleResult(probs, counts, [["", "", self.rle, ""] for _ in range(n)]))
        return future

    def close(self) -> None:
        pass


class FakeStore:
    def __init__(self, journal: Journal, failures: int = 0, error: Exception | None = None) -> None:
        self.journal, self.failures, self.error = journal, failures, error
        self.rows: dict[str, FrameRecord] = {}
        self.published: list[tuple[str, int, str]] = []

    def write_batch(self, batch: Sequence[FrameRecord]) -> StoreResult:
        if self.error is not None:
            raise self.error
        if self.failures:
            self.failures -= 1
            self.journal.append("store-failed")
            raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
        self.journal.append("store")
        new = [r.frame_id for r in batch if r.frame_id not in self.rows]
        self.rows.update({r.frame_id: r for r in batch if r.frame_id in new})
        return StoreResult(tuple(new), tuple(r.frame_id for r in batch if r.frame_id not in new))

    def mark_published(self, published: Sequence[tuple[str, int, str]]) -> int:
        self.published.extend(published)
        return len(published)

    def close(self) -> None:
        pass


class FakeAlarms:
    def __init__(self, journal: Journal, failures: int = 0) -> None:
        self.journal, self.failures = journal, failures
        self.published: list[Any] = []

    def publish(self, alarms: Sequence[Any]) -> list[str]:
        if self.failures:
            self.failures -= 1
            self.journal.append("alarm-failed")
            raise redis.ConnectionError("Connection refused")
        self.journal.append("alarm")
        self.published.extend(alarms)
        return [f"{len(self.published)}-{i}" for i in range(len(alarms))]


class FakeDeadLetters:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.sent: list[Rejected] = []

    def send(self, rejects: Sequence[Rejected]) -> list[Rejected]:
        self.journal.append("dead_letter")
        self.sent.extend(rejects)
        return []

    def close(self) -> None:
        pass


# One batch per run_once (no inference ahead), so that a test can say which batch a step belongs to;
# tests/unit/test_infer_ahead.py drives the worker's default, AHEAD.
FAST = WorkerConfig(
    batch_size=8, batch_wait_s=0, backoff_initial_s=0.001, backoff_max_s=0.004, shutdown_grace_s=0,
    infer_ahead=False,
)  # fmt: skip
AHEAD = replace(FAST, infer_ahead=True)


def make_worker(
    messages: list[FakeMessage],
    *,
    infer_failures: int = 0,
    store_failures: int = 0,
    alarm_failures: int = 0,
    store_error: Exception | None = None,
    config: WorkerConfig = FAST,
    rotation_s: float = 0.0,
    janitor: Any = None,
) -> tuple[InferenceWorker, Journal, dict[str, Any]]:
    journal = Journal()
    parts = {
        "consumer": FakeConsumer(journal, messages),
        "inference": FakeInference(journal, infer_failures),
        "store": FakeStore(journal, store_failures, store_error),
        "alarm_publisher": FakeAlarms(journal, alarm_failures),
        "dead_letters": FakeDeadLetters(journal),
    }
    settings = Settings(
        alarm_min_probability=(0.5,) * 4,
        alarm_min_area_px=(100,) * 4,
        frames_topic=TOPIC,
        topic_rotation_s=rotation_s,
        topic_janitor_interval_s=3600,  # the janitor thread never ticks during a test
    )
    worker = InferenceWorker(settings, config, janitor=janitor, **parts)
    worker.setup()
    return worker, journal, parts


def stage_order(journal: Journal) -> list[str]:
    return [e for e in journal if e not in ("pause", "resume")]


def good_messages(n: int) -> list[FakeMessage]:
    return [FakeMessage(frame_value(i), i % 2, 10 + i // 2) for i in range(n)]


def records_of(
    frames: Sequence[ValidFrame], result: EnsembleResult, received_at: datetime
) -> tuple[list[FrameRecord], list[Alarm], list[Rejected]]:
    """build_records as model "m" version "1", under a rule that any 1 px at 0.5 fires."""
    return build_records(
        frames,
        result,
        AlarmRule((0.5,) * 4, (1,) * 4),
        received_at=received_at,
        infer_s=0.0,
        model_name="m",
        model_version="1",
    )
