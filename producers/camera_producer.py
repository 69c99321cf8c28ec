"""Publishing camera frames to Kafka, with every delivery accounted for.

A frame goes to ``settings.frames_topic`` (with topic rotation: its bucket for the publish time,
see steelcore.kafka.topic_rotation) keyed by its camera id, so each camera's frames stay in order in
one partition; its ground truth (when the source knows it) goes to ``settings.truth_topic`` (or
its bucket) keyed by frame id, as JSON, so live accuracy can be measured against
what the workers stored. Every message gets a delivery report; :class:`DeliveryStats` counts
them, and :meth:`CameraProducer.flush` waits for the outstanding ones. A run is a success only
when every frame and truth message was delivered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from producers.bucket_router import BucketRouter
from producers.frame_sources import FrameClock, FrameSource, SourceFrame
from steelcore.frame_message import Encoding, FrameHeader, encode_frame, encode_image
from steelcore.kafka.topic_rotation import rotation_seconds
from steelcore.settings import Settings, get_settings

log = logging.getLogger(__name__)

# How long produce() waits for room in librdkafka's queue before trying again.
_QUEUE_FULL_WAIT_S = 0.2
_QUEUE_FULL_TRIES = 50


@dataclass
class DeliveryStats:
    """Delivery reports of one producer, frames and truth messages counted apart."""

    frames_sent: int = 0
    frames_delivered: int = 0
    frames_failed: int = 0
    truth_sent: int = 0
    truth_delivered: int = 0
    truth_failed: int = 0
    bytes_sent: int = 0  # message values handed to the producer, frames and truth
    first_error: str | None = None

    @property
    def pending(self) -> int:
        return (
            self.frames_sent
            - self.frames_delivered
            - self.frames_failed
            + self.truth_sent
            - self.truth_delivered
            - self.truth_failed
        )

    @property
    def ok(self) -> bool:
        """Every message sent was delivered."""
        return self.frames_failed == 0 and self.truth_failed == 0 and self.pending == 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pending": self.pending, "ok": self.ok}


def truth_message(header: FrameHeader, frame: SourceFrame) -> bytes:
    """The ground-truth record of a frame: JSON with one RLE per class ('' = none)."""
    assert frame.truth is not None
    return json.dumps(
        {
            "frame_id": header.frame_id,
            "line_id": header.line_id,
            "camera_id": header.camera_id,
            "source_ref": frame.source_ref,
            "rles": list(frame.truth),
        },
        separators=(",", ":"),
    ).encode()


class CameraProducer:
    """One Kafka producer for any number of cameras of a run.

    With topic rotation (steelcore.kafka.topic_rotation) each message goes to the bucket of its publish
    time; the buckets are created with ``partitions`` partitions (default settings.frames_partitions)
    and a message not delivered within ``topic_close_grace_s`` fails, so a closed bucket never
    receives anything. ``router`` replaces the routing built from settings (tests).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        encoding: Encoding = "jpeg",
        producer: Any | None = None,
        partitions: int | None = None,
        router: BucketRouter | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.encoding: Encoding = encoding
        self.partitions = partitions if partitions is not None else self.settings.frames_partitions
        if self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")
        rotation_s = rotation_seconds(self.settings)
        if producer is None:
            from steelcore.kafka.clients import new_producer

            # Frames above 1 MB (raw or PNG) need a larger message size; the broker accepts them.
            overrides: dict[str, Any] = {"message.max.bytes": self.settings.max_frame_bytes}
            if rotation_s > 0:
                overrides["message.timeout.ms"] = round(self.settings.topic_close_grace_s * 1000)
            producer = new_producer(self.settings, overrides)
            if router is None and rotation_s > 0:
                router = self._bucket_router(rotation_s)
        self._producer = producer
        self.router = router or BucketRouter(
            self.settings.frames_topic, self.settings.truth_topic, rotation_s
        )
        self.stats = DeliveryStats()

    def _bucket_router(self, rotation_s: float) -> BucketRouter:
        from steelcore.kafka.clients import new_admin
        from steelcore.kafka.exceptions import KafkaException
        from steelcore.kafka.topic_admin import ensure_topics

        admin = new_admin(self.settings)

        def create(names: Sequence[str]) -> None:
            try:
                ensure_topics(admin, names, self.partitions)
            except (KafkaException, TimeoutError) as exc:
                # Not fatal: the broker may auto-create on produce; a failed delivery is counted.
                log.warning("could not create bucket topics %s: %s", list(names), exc)

        return BucketRouter(self.settings.frames_topic, self.settings.truth_topic, rotation_s, create)

    # --- delivery reports (run inside poll/flush, on this thread) ------------------------------
    def _on_frame(self, err: Any, msg: Any) -> None:
        if err is None:
            self.stats.frames_delivered += 1
            return
        self.stats.frames_failed += 1
        self._note_failure("frame", err, msg)

    def _on_truth(self, err: Any, msg: Any) -> None:
        if err is None:
            self.stats.truth_delivered += 1
            return
        self.stats.truth_failed += 1
        self._note_failure("truth", err, msg)

    def _note_failure(self, kind: str, err: Any, msg: Any) -> None:
        key = msg.key().decode(errors="replace") if msg is not None and msg.key() else "?"
        text = f"{kind} message (key {key}) not delivered: {err}"
        if self.stats.first_error is None:
            self.stats.first_error = text
        log.error(text)

    # --- publishing --------------------------------------------------------------------------
    def publish(self, source: FrameSource, frame: SourceFrame, captured_at: datetime) -> FrameHeader:
        """Encode and send one frame (and its truth); returns the header sent."""
        header = source.spec.header(frame.index, self.encoding, captured_at)
        value = encode_frame(header, encode_image(frame.pixels, self.encoding))
        if len(value) > self.settings.max_frame_bytes:
            raise ValueError(
                f"frame {header.frame_id} is {len(value)} bytes, over max_frame_bytes "
                f"{self.settings.max_frame_bytes}; use --encoding jpeg"
            )
        timestamp_ms = int(header.captured_at.timestamp() * 1000)
        frames_topic, truth_topic = self.router.route()
        self._produce(
            frames_topic,
            value,
            header.camera_id.encode(),
            self._on_frame,
            timestamp_ms,
            [("frame_id", header.frame_id.encode())],
        )
        self.stats.frames_sent += 1
        if frame.truth is not None:
            self._produce(
                truth_topic,
                truth_message(header, frame),
                header.frame_id.encode(),
                self._on_truth,
                timestamp_ms,
                None,
            )
            self.stats.truth_sent += 1
        self._producer.poll(0)
        return header

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        callback: Callable[[Any, Any], None],
        timestamp_ms: int,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        for _ in range(_QUEUE_FULL_TRIES):
            try:
                self._producer.produce(
                    topic, value=value, key=key, on_delivery=callback, timestamp=timestamp_ms, headers=headers
                )
                self.stats.bytes_sent += len(value)
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room, then retry.
                self._producer.poll(_QUEUE_FULL_WAIT_S)
        raise RuntimeError(
            f"librdkafka queue still full after {_QUEUE_FULL_TRIES * _QUEUE_FULL_WAIT_S:.0f} s; "
            "is the broker reachable?"
        )

    def flush(self, timeout_s: float = 30.0) -> DeliveryStats:
        """Wait for outstanding delivery reports (up to ``timeout_s``); returns the stats."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.error("%d message(s) still undelivered after %.0f s", remaining, timeout_s)
        return self.stats


@dataclass(frozen=True)
class RunResult:
    frames: int  # frame indices published per camera
    late_frames: int  # frames published more than one frame period behind schedule
    elapsed_s: float
    stats: DeliveryStats


def publish_run(
    producer: CameraProducer,
    sources: Sequence[FrameSource],
    *,
    frames: int | None,
    stop: threading.Event,
    realtime: bool = True,
    on_frame: Callable[[int], None] | None = None,
    flush_timeout_s: float = 30.0,
) -> RunResult:
    """Publish frames 0, 1, ... of every source until ``frames`` are done or ``stop`` is set,
    then flush.

    ``realtime``: frame ``i`` is published when it is due on the cameras' absolute schedule and
    stamped with its scheduled capture time; otherwise as fast as possible, stamped with the
    time of publishing. ``frames=None`` publishes one pass of a finite source, or forever.
    """
    if not sources:
        raise ValueError("publish_run needs at least one frame source")
    limit = frames
    if limit is None:
        counts = [s.count for s in sources if s.count is not None]
        limit = min(counts) if counts else None
    if limit is not None and limit < 0:
        raise ValueError(f"frames must be >= 0, got {limit}")
    geometry = sources[0].spec.geometry
    clock = FrameClock(geometry.fps)
    started = time.monotonic()
    index = late = 0
    try:
        while not stop.is_set() and (limit is None or index < limit):
            # Render ahead of the due time, so the publish itself lands on schedule.
            batch = [(source, source.frame(index)) for source in sources]
            if realtime:
                lateness = clock.wait(index, stop)
                if stop.is_set():
                    break
                late += lateness > 1.0 / geometry.fps
            for source, frame in batch:
                captured = source.spec.scheduled_at(index) if realtime else datetime.now(UTC)
                producer.publish(source, frame, captured)
            index += 1
            if on_frame is not None:
                on_frame(index)
    finally:
        stats = producer.flush(flush_timeout_s)
    return RunResult(index, late, time.monotonic() - started, stats)
