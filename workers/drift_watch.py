"""The worker's side of drift monitoring: each stored frame's statistics into the monitor, each
episode onto the inspection stream. Advisory: a failure here is logged and never holds a frame, and
an episode Redis could not take is kept and sent again with the next batch."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steelcore.postgres.frame_records import FrameRecord
from steelcore.redis.connection import Client
from steelcore.redis.exceptions import RedisError
from steelcore.redis.inspection_alarms import InspectionAlarms
from steelcore.settings import Settings
from workers.drift_monitor import REFERENCE_FILE, DriftEvent, DriftMonitor, DriftReference, frame_input_stats
from workers.frame_batch import ValidFrame
from workers.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

# Episodes waiting for Redis beyond this are dropped oldest first (each is logged when it happens).
MAX_PENDING = 100
# How often a worker compares the episodes on Redis with the cameras it sees settled.
RECONCILE_S = 10.0


def reference_path(settings: Settings) -> Path:
    return settings.drift_reference_path or Path(settings.models_dir) / settings.model_name / REFERENCE_FILE


def read_reference(path: Path) -> tuple[DriftReference | None, str]:
    """The reference at ``path``, or None and why not."""
    try:
        reference = DriftReference.read(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"an unreadable drift reference {path} ({exc})"
    return (
        reference,
        "" if reference else f"no drift reference at {path} (python -m training.drift_reference)",
    )


class DriftWatch:
    def __init__(
        self,
        monitor: DriftMonitor,
        alarms: InspectionAlarms,
        metrics: WorkerMetrics,
        model: str = "",
        models_dir: Path | None = None,
    ) -> None:
        self.monitor = monitor
        self.alarms = alarms
        self.metrics = metrics
        self.model = model
        # With models_dir, the reference follows the bundle that judges the frames (a promotion
        # changes it); without, the one reference given is kept (STEEL_DRIFT_REFERENCE_PATH).
        self.models_dir = models_dir
        self.pending: list[DriftEvent] = []
        self._next_reconcile = 0.0
        self._judging = model  # the bundle of the frames last seen

    def follow(self, bundle: str) -> None:
        """Judge against ``bundle``'s reference from now on, when it has one: the windows start
        afresh, since the new model knows other frames; an episode on Redis is ended by the
        reconciliation once the camera is seen settled against the new reference."""
        if self.models_dir is None or not bundle or bundle == self._judging:
            return
        self._judging = bundle
        if bundle == self.model:  # back to the model the reference belongs to (a rollback)
            reference, reason = self.monitor.reference, ""
        else:
            reference, reason = read_reference(self.models_dir / bundle / REFERENCE_FILE)
        # The same thresholds, fresh windows (the monitor's camera windows are not init fields).
        if reference is None:
            # The camera's inputs are still judged against the old reference; the new model's
            # outputs cannot be (another model marks other shares, which is no drift).
            log.warning("drift: %s has %s; judging inputs only, against %s's", bundle, reason, self.model)
            self.monitor = dataclasses.replace(self.monitor, outputs=False)
            return
        log.info("drift: judging %s against its reference (was %s)", bundle, self.model)
        self.monitor = dataclasses.replace(self.monitor, reference=reference, outputs=True)
        self.model = bundle

    @classmethod
    def from_settings(cls, settings: Settings, client: Client, metrics: WorkerMetrics) -> DriftWatch | None:
        """None, with a warning, when the served model has no drift reference."""
        path = reference_path(settings)
        reference, reason = read_reference(path)
        if reference is None:
            log.warning("drift monitoring off: %s", reason)
            return None
        try:
            monitor = DriftMonitor(
                reference,
                window=settings.drift_window_frames,
                raise_z=settings.drift_raise_z,
                clear_z=settings.drift_clear_z,
                raise_share=settings.drift_raise_share,
                clear_share=settings.drift_clear_share,
            )
        except ValueError as exc:  # e.g. clear thresholds above raise ones: say so, keep inspecting
            log.error("drift monitoring off: STEEL_DRIFT_* settings are inconsistent: %s", exc)
            return None
        log.info("drift monitoring against %s (%s frames, window %s)", path, reference.frames, monitor.window)
        alarms = InspectionAlarms(client, settings.inspection_alarm_stream)
        follows = None if settings.drift_reference_path else Path(settings.models_dir)
        return cls(monitor, alarms, metrics, settings.model_name, follows)

    def observe(self, frames: Sequence[ValidFrame], records: Sequence[FrameRecord]) -> None:
        """The frames of a finished batch and the records stored for them."""
        by_id = {record.frame_id: record for record in records}
        gates = self.monitor.reference.gates
        for frame in frames:
            record = by_id.get(frame.header.frame_id)
            if record is None:  # dead-lettered
                continue
            self.follow(record.model_name)
            jpeg = len(frame.image) if frame.header.encoding == "jpeg" and frame.image else None
            classes = {d.class_id for d in record.defects}
            present = [k + 1 in classes for k in range(len(self.monitor.reference.defect_share))]
            probs = record.class_probs or ()
            if len(probs) != len(gates):  # no classifier output, or a reference without gates
                probs, use_gates = (), ()
            else:
                use_gates = gates
            camera = f"{record.line_id}/{record.camera_id}"
            event = self.monitor.observe(
                camera, frame_input_stats(frame.pixels, jpeg), probs, present, use_gates
            )
            if event is not None:
                self.metrics.drifting.labels(camera).set(1 if event.state == "raised" else 0)
                log.warning("drift %s: %s", event.state, event.message)
                self.pending.append(event)
        self._reconcile()
        self.flush()

    def _reconcile(self) -> None:
        """End the episodes on Redis of cameras this worker sees back within the reference: the
        worker that raised one may have lost the camera in a rebalance."""
        now = time.monotonic()
        if now < self._next_reconcile:
            return
        self._next_reconcile = now + RECONCILE_S
        settled = self.monitor.settled()
        if not settled:
            return
        try:
            active = self.alarms.active()
        except RedisError:
            return  # the next batch tries again
        for camera in settled:
            if camera in active and not any(e.camera == camera for e in self.pending):
                statistics = tuple(active[camera].get("statistics", ()))
                message = f"camera {camera}: frames back within what the model knows"
                self.pending.append(DriftEvent(camera, "cleared", statistics, message))

    def flush(self) -> None:
        while self.pending:
            event = self.pending[0]
            try:
                entry = self.alarms.publish(event, model=self.model)
            except RedisError as exc:
                log.warning("inspection alarm not published yet (%s); %s waiting", exc, len(self.pending))
                del self.pending[:-MAX_PENDING]
                return
            if entry is not None:
                self.metrics.inspection_alarms.labels(event.camera, event.state).inc()
            self.pending.pop(0)


def observe_safely(
    watch: DriftWatch | None, frames: Sequence[ValidFrame], records: Sequence[FrameRecord]
) -> None:
    """Drift is advisory: nothing in it may stop the worker."""
    if watch is None or not records:
        return
    try:
        watch.observe(frames, records)
    except Exception as exc:  # the frames are stored and committed already: log and go on
        log.exception("drift monitoring failed on a batch: %s", exc)


def client_of(publisher: Any) -> Client | None:
    """The Redis client of the worker's alarm publisher, when it has one."""
    client = getattr(publisher, "client", None)
    return client if isinstance(client, Client) else None
