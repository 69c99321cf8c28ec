"""What `steel demo` shows while it runs and prints at the end, read from where the pipeline writes.

- produced: distinct frames of this run whose ground truth reached the truth topic (live); the
  producers' own delivery counts at the end;
- stored, defects per class, alarms: the defect database (this run's line, captured since start);
- dead-lettered: the workers' Prometheus counters;
- camera-to-alarm latency: the Redis stream entry time of each alarm (when it was first
  published, the id's milliseconds part) minus the frame's captured_at; camera-to-actuator: the
  actuator journal's first acted_at minus captured_at (alarms are at-least-once: each alarm id
  counts once);
- live mean Dice: the Kaggle metric (training.metrics.dice_scores, empty/empty = 1) over the
  (frame, class) pairs of stored frames, stored defect RLEs against the truth topic's RLEs;
- broker RSS: the embedded broker's resident memory.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from stack.demo_truth import TruthReader
from steelcore import worker_metrics
from steelcore.redis.alarm_stream import AlarmStream
from steelcore.settings import Settings
from steelcore.severstal import CLASS_IDS, CLASS_NAMES
from steelcore.worker_metrics import parse_metrics

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Rows become visible in commit order, not in stored_at order: look back this far for late ones.
_STORED_AT_OVERLAP = timedelta(seconds=30)


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p99": None, "count": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "count": len(values)}


def frame_dice(predicted: Sequence[str], truth: Sequence[str]) -> np.ndarray:
    """Dice of each class of one frame (Kaggle: empty/empty = 1) from per-class RLEs."""
    from steelcore import rle
    from training.metrics import dice_scores

    return dice_scores(rle.decode_stack(predicted)[None], rle.decode_stack(truth)[None])[0]


@dataclass
class Snapshot:
    elapsed_s: float
    produced: int
    stored: int
    dead_lettered: int
    frames_per_s: float
    defects: dict[str, int]
    alarms: int
    actuator_acks: int
    camera_to_alarm_ms: dict[str, Any]
    camera_to_actuator_ms: dict[str, Any]
    mean_dice: float | None
    dice_frames: int
    broker_rss_mb: float | None
    workers_up: int = 0
    # The workers' own overload verdict (workers.batch_policy): now, and episodes so far.
    workers_overloaded: int = 0
    overload_episodes: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LiveSummary:
    """Collects a :class:`Snapshot` on demand; keeps incremental state between calls."""

    def __init__(
        self,
        settings: Settings,
        *,
        line_id: str,
        started: datetime,
        engine: Any,
        redis_client: Any,
        truth: TruthReader,
        metrics_urls: Sequence[str],
        journal: Path,
    ) -> None:
        self.settings, self.line_id, self.started = settings, line_id, started
        self.engine, self.truth = engine, truth
        # Read only, outside any group: the channel and the trim bounds are never used here.
        self.alarm_stream = AlarmStream(
            redis_client,
            settings.alarm_stream,
            settings.alarm_channel,
            settings.alarm_stream_maxlen,
            settings.alarm_stream_max_age_s,
        )
        self.metrics_urls, self.journal = list(metrics_urls), journal
        self._began = time.monotonic()
        self._alarm_latencies: list[float] = []
        self._act_latencies: list[float] = []
        self._acks = 0
        # Alarms are delivered at least once (a redelivered batch publishes them again, and an
        # actuator may act twice): each alarm id counts once, at its first publication / act.
        self._alarms_seen: set[str] = set()
        self._acted_seen: set[str] = set()
        self._last_entry = f"{int(started.timestamp() * 1000)}-0"
        self._journal_offset = 0
        self._scraped: dict[str, dict[str, float]] = {}
        self._dice_sum, self._dice_pairs, self._dice_frames = 0.0, 0, 0
        self._scored: set[str] = set()
        self._awaiting_truth: dict[str, list[str]] = {}  # frame id -> predicted RLEs
        self._stored_since = started
        self._rate: list[tuple[float, int]] = []

    # --- one refresh ----------------------------------------------------------------------------
    def refresh(self, produced: int | None = None) -> Snapshot:
        stored = self._stored()[0]
        now = time.monotonic()
        self._rate = [(t, n) for t, n in self._rate if now - t <= 10.0] + [(now, stored)]
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        self._read_alarm_stream()
        self._read_journal()
        self._scrape_workers()
        self._score_dice()
        from stack.kafka_broker import broker_rss_bytes

        rss = broker_rss_bytes(self.settings.run_dir)
        return Snapshot(
            elapsed_s=round(now - self._began, 1),
            produced=self.truth.seen if produced is None else produced,
            stored=stored,
            dead_lettered=int(self._metric_sum(f'{worker_metrics.FRAMES_TOTAL}{{outcome="dead_lettered"}}')),
            frames_per_s=rate,
            defects=self._defects(),
            alarms=self._alarms(),
            actuator_acks=self._acks,
            camera_to_alarm_ms=percentiles(self._alarm_latencies),
            camera_to_actuator_ms=percentiles(self._act_latencies),
            mean_dice=self._dice_sum / self._dice_pairs if self._dice_pairs else None,
            dice_frames=self._dice_frames,
            broker_rss_mb=rss / MB if rss is not None else None,
            workers_up=sum(1 for url in self.metrics_urls if url in self._scraped),
            workers_overloaded=sum(
                1 for values in self._scraped.values() if values.get(worker_metrics.OVERLOADED, 0) >= 1
            ),
            overload_episodes=int(self._metric_sum(worker_metrics.OVERLOAD_EPISODES_TOTAL)),
        )

    def throughput(self) -> float:
        """Stored frames per second from the first capture to the last store of this run."""
        stored, first_captured, last_stored = self._stored()
        if not stored or first_captured is None or last_stored is None:
            return 0.0
        return stored / max(1e-3, (last_stored - first_captured).total_seconds())

    # --- database ---------------------------------------------------------------------------------
    def _stored(self) -> tuple[int, datetime | None, datetime | None]:
        from steelcore.postgres.line_reads import stored_span

        return stored_span(self.engine, self.line_id, self.started)

    def _defects(self) -> dict[str, int]:
        from steelcore.postgres.line_reads import defects_per_class

        counts = defects_per_class(self.engine, self.line_id, self.started)
        return {CLASS_NAMES[c]: int(counts.get(c, 0)) for c in CLASS_IDS}

    def _alarms(self) -> int:
        from steelcore.postgres.line_reads import alarm_count

        return alarm_count(self.engine, self.line_id, self.started)

    def _score_dice(self) -> None:
        """Score newly stored frames whose truth has arrived; keep the others for later."""
        from steelcore.postgres.line_reads import defect_masks, frames_stored_since

        since = self._stored_since - _STORED_AT_OVERLAP
        rows = frames_stored_since(self.engine, self.line_id, self.started, since)
        new = [fid for fid, _ in rows if fid not in self._scored and fid not in self._awaiting_truth]
        if rows:
            self._stored_since = max(self._stored_since, max(at for _, at in rows))
        predicted = {fid: [""] * len(CLASS_IDS) for fid in new}
        for fid, class_id, code in defect_masks(self.engine, new):
            predicted[fid][CLASS_IDS.index(class_id)] = code
        self._awaiting_truth.update(predicted)
        for fid, truth in self.truth.take(list(self._awaiting_truth)).items():
            dice = frame_dice(self._awaiting_truth.pop(fid), truth)
            self._dice_sum += float(dice.sum())
            self._dice_pairs += len(dice)
            self._dice_frames += 1
            self._scored.add(fid)

    # --- Redis stream, actuator journal, worker metrics --------------------------------------------
    def _read_alarm_stream(self) -> None:
        while True:
            entries = self.alarm_stream.fields_after(self._last_entry, count=1000)
            if not entries:
                return
            for entry_id, decoded in entries:
                self._last_entry = entry_id
                if decoded.get("line_id") != self.line_id:
                    continue
                try:
                    captured = datetime.fromisoformat(decoded["captured_at"])
                except (KeyError, ValueError):
                    continue
                alarm_key = decoded.get("alarm_id", self._last_entry)  # "frame:class" (Alarm.alarm_key)
                if captured < self.started or alarm_key in self._alarms_seen:
                    continue
                self._alarms_seen.add(alarm_key)
                published_ms = int(self._last_entry.split("-", 1)[0])
                self._alarm_latencies.append(published_ms - captured.timestamp() * 1000)

    def _read_journal(self) -> None:
        if not self.journal.is_file():
            return
        with self.journal.open("rb") as fh:
            fh.seek(self._journal_offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._journal_offset += len(complete)
        for line in complete.splitlines():
            try:
                record = json.loads(line)
                captured = datetime.fromisoformat(record["captured_at"])
                acted = float(record["acted_at"])
            except (ValueError, KeyError, TypeError):
                continue
            alarm_key = str(record.get("alarm_id"))
            if (
                record.get("line_id") == self.line_id
                and captured >= self.started
                and alarm_key not in self._acted_seen
            ):
                self._acted_seen.add(alarm_key)
                self._acks += 1
                self._act_latencies.append(acted * 1000 - captured.timestamp() * 1000)

    def _scrape_workers(self) -> None:
        for url in self.metrics_urls:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    self._scraped[url] = parse_metrics(response.read().decode())
            except OSError:
                continue  # a stopped worker keeps its last values

    def _metric_sum(self, sample: str) -> float:
        return sum(values.get(sample, 0.0) for values in self._scraped.values())

    def stage_seconds(self) -> dict[str, dict[str, float]]:
        """Per worker stage: total seconds and batch count, summed over the workers (last scrape)."""
        out: dict[str, dict[str, float]] = {}
        for values in self._scraped.values():
            for name, value in values.items():
                for kind in ("sum", "count"):
                    prefix = f'{worker_metrics.STAGE_SECONDS}_{kind}{{stage="'
                    if name.startswith(prefix):
                        stage = name[len(prefix) : -2]
                        out.setdefault(stage, {"sum": 0.0, "count": 0.0})[kind] += value
        return out


def render(snapshot: Snapshot, *, title: str) -> str:
    """The live block printed every refresh."""
    s = snapshot

    def ms(d: dict[str, Any]) -> str:
        return f"p50 {d['p50']:.0f} ms, p99 {d['p99']:.0f} ms (n={d['count']})" if d["count"] else "-"

    defects = ", ".join(f"{name} {n}" for name, n in s.defects.items())
    dice = f"{s.mean_dice:.3f} over {s.dice_frames} frames" if s.mean_dice is not None else "-"
    rss = f"{s.broker_rss_mb:.0f} MB" if s.broker_rss_mb is not None else "-"
    load = []
    if s.workers_overloaded:
        load = [
            f"  LOAD     OVERLOADED: {s.workers_overloaded} of {s.workers_up} workers fall behind the "
            "latency target; the load is more than this machine serves (lower --fps)"
        ]
    return "\n".join(
        [
            *load,
            f"{title}   {s.elapsed_s:.0f} s",
            f"  frames   produced {s.produced}  stored {s.stored}  dead-lettered {s.dead_lettered}  "
            f"{s.frames_per_s:.1f} frames/s",
            f"  defects  {defects}",
            f"  alarms   {s.alarms}  actuator acks {s.actuator_acks}",
            f"  latency  camera->alarm {ms(s.camera_to_alarm_ms)}",
            f"           camera->actuator {ms(s.camera_to_actuator_ms)}",
            f"  accuracy live mean Dice {dice}",
            f"  broker   RSS {rss}   workers answering {s.workers_up}",
        ]
    )
