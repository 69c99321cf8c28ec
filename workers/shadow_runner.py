"""Shadow runs on the worker side: a share of the frames production judged are judged again by the
shadow version, and its answers stored apart (table shadow_results).

The worker offers a batch's frames only after the batch is stored and committed, and the offer never
waits: frames go into a bounded queue (``settings.shadow_queue_frames``) that one background thread
empties, and a full queue drops them (counted). The thread calls ``steel_cascade`` at the shadow
version (Triton routes its classifier/segmenter/postprocess calls to the same version) and inserts
the answers ON CONFLICT DO NOTHING, so a redelivered frame is stored once. It raises no alarms and
writes nothing production reads. Every failure is logged and counted
(``steel_worker_shadow_frames_total{outcome}``) and never reaches the production path.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from steelcore.triton.inference_result import EnsembleResult
from workers.frame_batch import ValidFrame
from workers.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

# The Triton model a shadow version is asked through: unlike the ensemble, whose steps are pinned to
# production, steel_cascade version V calls the other models at version V.
SHADOW_MODEL = "steel_cascade"
# Frames per shadow request (the cascade's max_batch_size).
SHADOW_BATCH = 8
# How often a lasting shadow failure is said again in the log (each one is counted).
WARN_EVERY_S = 30.0


class ShadowInference(Protocol):
    def infer_async(
        self, frames: np.ndarray, *, model_version: str | None = None
    ) -> Future[EnsembleResult]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class ShadowFrame:
    frame_id: str
    captured_at: datetime
    pixels: np.ndarray  # uint8 [256, 1600]
    version: int  # the shadow version it is meant for


class ShadowRunner:
    """The background thread that judges offered frames with the shadow version and stores them."""

    def __init__(
        self,
        inference: ShadowInference,
        write: Callable[[Sequence[dict[str, Any]]], int],
        metrics: WorkerMetrics,
        queue_frames: int,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.inference = inference
        self.write = write
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._queue: queue.Queue[ShadowFrame] = queue.Queue(maxsize=queue_frames)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._carry: ShadowFrame | None = None  # taken from the queue for the next request
        self._last_warning = -WARN_EVERY_S
        # Frames queued or being judged, so a test (or a stop) can wait until the shadow caught up.
        self._pending = 0
        self._settled = threading.Condition()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow-runner", daemon=True)
        self._thread.start()

    def offer(self, frames: Sequence[ValidFrame], version: int) -> int:
        """Queue frames for ``version``; never blocks. Returns how many were queued."""
        queued = 0
        for frame in frames:
            item = ShadowFrame(frame.header.frame_id, frame.header.captured_at, frame.pixels, version)
            with self._settled:
                self._pending += 1
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._done(1)
                # The shadow lags behind the line: its sample thins out, production never waits.
                self.metrics.shadow_frames.labels("dropped").inc(len(frames) - queued)
                break
            queued += 1
        return queued

    def wait_idle(self, timeout_s: float) -> bool:
        """Until every queued frame is judged (or failed); True when it came to that in time."""
        with self._settled:
            return self._settled.wait_for(lambda: self._pending == 0, timeout_s)

    def _done(self, n: int) -> None:
        with self._settled:
            self._pending -= n
            if self._pending == 0:
                self._settled.notify_all()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; frames still queued are dropped (counted): they are a sample, not data."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        left = self._queue.qsize() + (self._carry is not None)
        if left:
            self.metrics.shadow_frames.labels("dropped").inc(left)
        self.inference.close()

    # --- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            items = self._take()
            if items:
                try:
                    self._judge(items)
                finally:
                    self._done(len(items))

    def _take(self) -> list[ShadowFrame]:
        """Up to SHADOW_BATCH queued frames of one version (a role change mid-queue splits them)."""
        first = self._carry
        self._carry = None
        if first is None:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                return []
        items = [first]
        while len(items) < SHADOW_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item.version != first.version:
                self._carry = item
                break
            items.append(item)
        return items

    def _judge(self, items: list[ShadowFrame]) -> None:
        version = items[0].version
        try:
            future = self.inference.infer_async(
                np.stack([i.pixels for i in items]), model_version=str(version)
            )
            result = future.result(timeout=self.timeout_s)
            rows = shadow_rows(items, result)
            new = self.write(rows)
        except Exception as exc:  # the shadow never matters to production: count, say, go on
            self.metrics.shadow_frames.labels("failed").inc(len(items))
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                self._last_warning = now
                log.warning("shadow version %d failed on %d frame(s): %s", version, len(items), exc)
            return
        self.metrics.shadow_frames.labels("stored").inc(new)
        self.metrics.shadow_frames.labels("duplicate").inc(len(rows) - new)


def shadow_rows(items: Sequence[ShadowFrame], result: EnsembleResult) -> list[dict[str, Any]]:
    """shadow_results rows of an answer; the version is the answer's own where it says one."""
    if len(result) != len(items):
        raise RuntimeError(f"shadow answered {len(result)} results for {len(items)} frames")
    judged_at = datetime.now(UTC)
    rows = []
    for k, item in enumerate(items):
        version = int(result.versions[k]) if result.versions is not None else item.version
        rows.append(
            {
                "frame_id": item.frame_id,
                "captured_at": item.captured_at,
                "version": version,
                "judged_at": judged_at,
                "class_probs": [float(p) for p in result.probs[k]],
                "pixel_counts": [int(c) for c in result.pixel_counts[k]],
                "rles": list(result.rles[k]),
            }
        )
    return rows
