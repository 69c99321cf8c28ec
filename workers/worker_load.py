"""How the worker judges its load and counts each batch (mixed into
workers.worker_loop.InferenceWorker, whose attributes it uses).

Batch size and load (workers.batch_policy): the worker waits up to batch_wait_s for one frame, then
takes the frames already waiting, as many as meet settings.latency_target_s at the measured seconds
per frame (a short backlog: small batches), or up to batch_size once the oldest frame is past half the
target (a long backlog: throughput). When the oldest frame of its batches stays past the target for
settings.overload_hold_s without the wait shrinking, outside outages, the worker says so: an error
log line (repeated every log_every_s), steel_worker_overloaded = 1, shown on the health page.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from steelcore.kafka.exceptions import KafkaException
from steelcore.worker_metrics import (
    ALARMS_PUBLISHED_TOTAL,
    EVENT_LAG_SECONDS,
    FRAME_LATENCY_SECONDS,
    FRAMES_TOTAL,
)
from workers.drift_watch import observe_safely
from workers.frame_batch import Batch

log = logging.getLogger("steel.worker")


class WorkerLoad:
    """Batch timing for the batch policy, overload detection, and the metrics of each batch."""

    settings: Any
    config: Any
    metrics: Any
    consumer: Any

    def _judge_load(self, batch: Batch, seconds: float) -> None:
        """Teach the batch policy the batch's time, and judge the load by its oldest frame's
        camera-to-done time: loudly (error log, metric) when it stays past the latency target."""
        if not batch.valid:
            return
        if not self._held:
            self.batching.observe(len(batch.messages), seconds)
        latency = batch.oldest_lag_s()
        self.metrics.frame_latency.set(latency)
        self._served.append((time.monotonic(), len(batch.valid)))
        was = self.overload.overloaded
        if self.overload.update(time.monotonic(), latency, held=self._held):
            self.metrics.overloaded.set(1)
            self.metrics.overload_episodes.inc()
            self._log_overload(latency)
        elif was and not self.overload.overloaded:
            self.metrics.overloaded.set(0)
            log.warning(
                "load back within what this worker serves: camera-to-done %.2f s (target %.2f s)",
                latency, self.settings.latency_target_s,
            )  # fmt: skip

    def _served_fps(self) -> float:
        """Frames this worker served per second over the last overload_hold_s."""
        now = time.monotonic()
        window = self.settings.overload_hold_s
        self._served = [(t, n) for t, n in self._served if now - t <= window]
        if len(self._served) < 2:
            return 0.0
        span = now - self._served[0][0]
        return sum(n for _, n in self._served[1:]) / span if span > 0 else 0.0

    def _log_overload(self, latency: float) -> None:
        log.error(
            "OVERLOADED: frames wait %.1f s from camera to done (target %.2f s) and the wait has not "
            "shrunk for %.0f s; this worker serves %.1f frames/s at batches of up to %d (%.0f ms per "
            "frame). The load is more than this machine serves: lower the camera rate, add workers "
            "or a faster Triton",
            latency, self.settings.latency_target_s, self.settings.overload_hold_s, self._served_fps(),
            self.config.batch_size, 1000 * self.batching.frame_s,
        )  # fmt: skip

    # --- bookkeeping ----------------------------------------------------------------------------
    def _record_outcome(self, batch: Batch) -> None:
        observe_safely(self.drift, batch.valid, batch.records or [])
        stored = batch.stored
        self.metrics.count("stored", len(stored.new_frame_ids) if stored else 0)
        self.metrics.count("duplicate", len(stored.duplicate_frame_ids) if stored else 0)
        self.metrics.count("dead_lettered", len(batch.rejects))
        if batch.alarm_entries:
            self.metrics.alarms.inc(len(batch.alarm_entries))
        if batch.valid:
            newest = max(f.header.captured_at for f in batch.valid)
            self.metrics.event_lag.set((datetime.now(UTC) - newest).total_seconds())
        if not self._embedded_kafka:
            self._export_offset_lag()

    def _export_offset_lag(self) -> None:
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        for tp in self.consumer.position(assignment) if assignment else []:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if tp.offset >= 0 and high >= 0:
                self.metrics.offset_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    def _maybe_log(self) -> None:
        if time.monotonic() - self._last_log < self.config.log_every_s:
            return
        self._last_log = time.monotonic()
        m = self.metrics
        if self.overload.overloaded:
            self._log_overload(m.value(FRAME_LATENCY_SECONDS))
        log.info(
            "stored %d, duplicate %d, dead-lettered %d frames; %d alarms; event lag %.1f s",
            m.value(FRAMES_TOTAL, {"outcome": "stored"}),
            m.value(FRAMES_TOTAL, {"outcome": "duplicate"}),
            m.value(FRAMES_TOTAL, {"outcome": "dead_lettered"}),
            m.value(ALARMS_PUBLISHED_TOTAL),
            m.value(EVENT_LAG_SECONDS),
        )
