"""The durable write of one batch of frame results: frames, their defects, alarms and the images of
defective frames (steelcore/postgres/frame_images.py), in one transaction. The records are in
frame_records.py, the alarm outbox that follows the write in alarm_outbox.py.

Idempotent on ``frame_id``, so a Kafka batch redelivered after a crash (offsets are committed only
after this write) adds nothing:
- frames go in with ``INSERT ... ON CONFLICT (frame_id, captured_at) DO NOTHING RETURNING frame_id``; the
  returned ids are the frames new in this transaction;
- defects and alarms are written only for those new frames, so the first stored result of a frame
  wins and a re-inferred duplicate can never mix its defects into it;
- lines, cameras and coils are upserted on first sight with ``ON CONFLICT DO NOTHING``.
Rows go in sorted by key, so two workers writing overlapping batches take row locks in the same
order and wait for each other instead of deadlocking.

Writes use SQLAlchemy Core executemany (one multi-row INSERT per table), which measured several
times faster than ORM ``add_all`` on these machines (shared/notes/embedded-stack.md).

Severity (stored per defect, in [0, 1]):
    severity = probability * min(1, area_px / (SEVERITY_FULL_SCALE * alarm_min_area_px[class]))
i.e. the defect's probability, scaled down while its area is below ten times the class's alarm
area (Settings.alarm_min_area_px). A certain defect ten alarm-areas large rates 1; a barely
alarming one about 0.1 x its probability. Ranking and filtering (``steel query --min-severity``)
use it; the alarm rule itself stays probability AND area.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert

from steelcore.postgres.frame_images import image_encoding
from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord, StoreResult
from steelcore.postgres.schema import (
    alarms,
    cameras,
    coils,
    defects,
    frame_images,
    frames,
    lines,
    shadow_results,
)
from steelcore.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Multiples of a class's alarm area at which the area term of severity saturates (see docstring).
SEVERITY_FULL_SCALE = 10


def severity(probability: float, area_px: int, class_id: int, alarm_min_area_px: Sequence[int]) -> float:
    """Severity in [0, 1] as defined in the module docstring. A class beyond the alarm table
    (another model's classes) is scaled by the largest alarm area."""
    if 1 <= class_id <= len(alarm_min_area_px):
        reference = alarm_min_area_px[class_id - 1]
    else:
        reference = max(alarm_min_area_px)
    return probability * min(1.0, area_px / (SEVERITY_FULL_SCALE * max(1, reference)))


def write_shadow_results(engine: Engine, rows: Sequence[dict[str, Any]]) -> int:
    """Insert a shadow version's answers (workers.shadow_runner); returns how many were new (a
    redelivered frame's are skipped)."""
    if not rows:
        return 0
    with engine.begin() as conn:
        inserted = conn.execute(
            insert(shadow_results).on_conflict_do_nothing().returning(shadow_results.c.frame_id), list(rows)
        )
        return len(inserted.scalars().all())


class DefectStore:
    """Writes batches of FrameRecords to the defect database (migrated by steelcore.postgres.migrate)."""

    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        self.engine = engine
        self._alarm_areas = tuple((settings or get_settings()).alarm_min_area_px)

    def write_batch(self, batch: Sequence[FrameRecord]) -> StoreResult:
        """Store the batch in one transaction; frames already stored are skipped with everything
        they carry. Raises the database error (nothing stored) if the transaction fails."""
        started = time.perf_counter()
        unique: dict[str, FrameRecord] = {}
        repeated: list[str] = []
        for record in batch:
            if record.frame_id in unique:
                repeated.append(record.frame_id)  # a producer retry inside one poll; first copy wins
            else:
                unique[record.frame_id] = record
        if not unique:
            return StoreResult(new_frame_ids=())
        ordered = [unique[k] for k in sorted(unique)]

        with self.engine.begin() as conn:
            self._upsert_dimensions(conn, ordered)
            inserted = conn.execute(
                insert(frames)
                # The key of the partitioned table; a redelivery carries the same captured_at.
                .on_conflict_do_nothing(index_elements=["frame_id", "captured_at"])
                .returning(frames.c.frame_id),
                [_frame_row(r) for r in ordered],
            )
            new_ids = set(inserted.scalars())
            new_records = [r for r in ordered if r.frame_id in new_ids]
            defect_rows = [_defect_row(r, d, self._alarm_areas) for r in new_records for d in r.defects]
            if defect_rows:
                conn.execute(insert(defects), defect_rows)
            alarm_rows = [_alarm_row(r, a) for r in new_records for a in sorted(r.alarms, key=_by_class)]
            if alarm_rows:
                conn.execute(insert(alarms), alarm_rows)
            image_rows = [_image_row(r) for r in new_records if r.keeps_image]
            if image_rows:
                conn.execute(insert(frame_images), image_rows)

        duplicates = sorted(set(unique) - new_ids) + repeated
        if duplicates:
            log.info("skipped %d frame(s) already stored, e.g. %s", len(duplicates), duplicates[0])
        return StoreResult(
            new_frame_ids=tuple(r.frame_id for r in new_records),
            duplicate_frame_ids=tuple(duplicates),
            defects_written=len(defect_rows),
            alarms_written=len(alarm_rows),
            images_written=len(image_rows),
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
            new_alarms=tuple((row["frame_id"], row["class_id"]) for row in alarm_rows),
        )

    @staticmethod
    def _upsert_dimensions(conn: Connection, ordered: Sequence[FrameRecord]) -> None:
        line_ids = sorted({r.line_id for r in ordered})
        camera_keys = sorted({(r.line_id, r.camera_id) for r in ordered})
        coil_lines: dict[str, str] = {}
        for r in ordered:
            coil_lines.setdefault(r.coil_id, r.line_id)
        conn.execute(insert(lines).on_conflict_do_nothing(), [{"line_id": k} for k in line_ids])
        conn.execute(
            insert(cameras).on_conflict_do_nothing(),
            [{"line_id": line, "camera_id": cam} for line, cam in camera_keys],
        )
        conn.execute(
            insert(coils).on_conflict_do_nothing(),
            [{"coil_id": k, "line_id": coil_lines[k]} for k in sorted(coil_lines)],
        )


def _by_class(item: DefectRecord | AlarmRecord) -> int:
    return item.class_id


def _frame_row(r: FrameRecord) -> dict[str, Any]:
    return {
        "frame_id": r.frame_id,
        "line_id": r.line_id,
        "camera_id": r.camera_id,
        "coil_id": r.coil_id,
        "position_m": r.position_m,
        "height": r.height,
        "width": r.width,
        "captured_at": r.captured_at,
        "received_at": r.received_at,
        "decode_ms": r.decode_ms,
        "infer_ms": r.infer_ms,
        "store_ms": r.store_ms,
        "model_name": r.model_name,
        "model_version": r.model_version,
        "class_probs": list(r.class_probs) if r.class_probs is not None else None,
        "image_ref": r.image_ref,
    }


def _defect_row(r: FrameRecord, d: DefectRecord, alarm_areas: Sequence[int]) -> dict[str, Any]:
    x0, y0, x1, y1 = d.bbox
    return {
        "frame_id": r.frame_id,
        "class_id": d.class_id,
        "captured_at": r.captured_at,
        "line_id": r.line_id,
        "camera_id": r.camera_id,
        "coil_id": r.coil_id,
        "rle": d.rle,
        "area_px": d.area_px,
        "bbox_x0": x0,
        "bbox_y0": y0,
        "bbox_x1": x1,
        "bbox_y1": y1,
        "probability": d.probability,
        "severity": severity(d.probability, d.area_px, d.class_id, alarm_areas),
    }


def _image_row(r: FrameRecord) -> dict[str, Any]:
    assert r.image is not None  # only frames that keep their image get here
    encoding = image_encoding(r.image, r.height, r.width, r.image_encoding)
    return {"frame_id": r.frame_id, "encoding": encoding, "image": r.image}


def _alarm_row(r: FrameRecord, a: AlarmRecord) -> dict[str, Any]:
    return {
        "frame_id": r.frame_id,
        "class_id": a.class_id,
        "probability": a.probability,
        "area_px": a.area_px,
        "raised_at": a.raised_at,
        "stream_entry_id": a.stream_entry_id,
        "published_at": a.published_at,
    }
