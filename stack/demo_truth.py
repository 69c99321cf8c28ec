"""The ground truth of a `steel demo` run, read back from the truth topic for the live Dice."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from steelcore.settings import Settings

log = logging.getLogger(__name__)


class TruthReader:
    """Reads the truth topic (or its current buckets) in a group of its own and keeps the RLEs of
    this run's frames (line ``line_id``, frame ids made after ``since_ms``) until they are taken."""

    def __init__(self, settings: Settings, line_id: str, since_ms: int, consumer: Any | None = None) -> None:
        from steelcore.kafka.topic_rotation import rotation_seconds

        self.settings, self.line_id, self.since_ms = settings, line_id, since_ms
        self.rotation_s = rotation_seconds(settings)
        self._consumer = consumer
        self._truth: dict[str, list[str]] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._floor: int | None = None
        self._thread = threading.Thread(target=self._run, name="truth-reader", daemon=True)

    @property
    def seen(self) -> int:
        return len(self._seen)

    def start(self) -> None:
        if self._consumer is None:
            from steelcore.kafka.clients import new_consumer
            from steelcore.kafka.topic_rotation import SUBSCRIPTION_REFRESH_MS

            overrides: dict[str, Any] = {}
            if self.rotation_s > 0:
                overrides["topic.metadata.refresh.interval.ms"] = SUBSCRIPTION_REFRESH_MS
            group = f"steel-demo-truth-{uuid.uuid4().hex[:8]}"
            self._consumer = new_consumer(group, self.settings, overrides)
        self._subscribe()
        self._thread.start()

    def _subscribe(self) -> None:
        from steelcore.kafka.topic_rotation import bucket_of, subscription_pattern

        if self.rotation_s <= 0:
            if self._floor is None:
                self._consumer.subscribe([self.settings.truth_topic])
                self._floor = 0
            return
        # From the previous bucket on: the janitor deletes truth buckets TRUTH_KEEP_BUCKETS back,
        # so this reader has dropped a bucket well before it goes.
        floor = bucket_of(time.time(), self.rotation_s) - 1
        if floor != self._floor:
            self._consumer.subscribe([subscription_pattern(self.settings.truth_topic, floor)])
            self._floor = floor

    def _run(self) -> None:
        from producers.frame_sources import frame_run_start_ms

        while not self._stop.is_set():
            self._subscribe()
            for message in self._consumer.consume(num_messages=200, timeout=0.5):
                if message.error() is not None:
                    continue
                try:
                    record = json.loads(message.value())
                    frame_id, rles = record["frame_id"], record["rles"]
                    ours = record["line_id"] == self.line_id and frame_run_start_ms(frame_id) >= self.since_ms
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning(
                        "unreadable truth message at %s[%d]: %s", message.topic(), message.partition(), exc
                    )
                    continue
                if ours:
                    with self._lock:
                        if frame_id not in self._seen:
                            self._seen.add(frame_id)
                            self._truth[frame_id] = list(rles)

    def take(self, frame_ids: Sequence[str]) -> dict[str, list[str]]:
        """The truth of those of ``frame_ids`` read so far; each is handed out once."""
        with self._lock:
            return {fid: self._truth.pop(fid) for fid in frame_ids if fid in self._truth}

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._consumer is not None:
            self._consumer.close()
