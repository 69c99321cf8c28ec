"""Stored frames with their defects, as the live page's tiles, the history page's frame viewer, the
coil strip map and the retraining export read them. Frames are found by id, by a time window on
``captured_at`` or by coil (each served by an index of the schema); lists are bounded by a LIMIT
or by the ids the caller gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from steelcore.frame_message import FrameIdentity
from steelcore.postgres.schema import defect_frame, defect_measures, defects, frames

# Enough rows to draw, few enough to move every refresh.
MAX_STRIP_MARKS = 5000


@dataclass(frozen=True)
class DefectMark:
    """One defect of a frame, with what overlays and strip maps need."""

    defect_id: int
    frame_id: str
    class_id: int
    rle: str
    area_px: int
    bbox: tuple[int, int, int, int]
    probability: float
    severity: float


@dataclass(frozen=True)
class FrameDetail(FrameIdentity):
    """A stored frame and all its defects (class order)."""

    height: int
    width: int
    model_name: str
    model_version: str
    defects: tuple[DefectMark, ...]


@dataclass(frozen=True)
class StripMark:
    defect_id: int
    class_id: int
    position_m: float  # along the coil: the frame's position from the coil's head
    across_px: float  # across the width: the defect's bbox centre column
    width_px: int
    area_px: int
    severity: float


def recent_defective_frames(
    engine: Engine, since: datetime, limit: int = 4, *, line_id: str | None = None
) -> list[FrameDetail]:
    """The newest frames captured since ``since`` that carry a defect, newest first."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    where = [defects.c.captured_at >= since]
    if line_id is not None:
        where.append(defects.c.line_id == line_id)
    # A frame has at most one defect per class, so limit * NUM_CLASSES rows hold `limit` frames.
    stmt = (
        select(defects.c.frame_id)
        .where(*where)
        .order_by(defects.c.captured_at.desc(), defects.c.frame_id)
        .limit(limit * 4)
    )
    with engine.connect() as conn:
        ids = list(dict.fromkeys(conn.execute(stmt).scalars()))[:limit]
    details = frame_details(engine, ids)
    return [details[i] for i in ids if i in details]


def frame_details(engine: Engine, frame_ids: Sequence[str]) -> dict[str, FrameDetail]:
    """The frames with these ids and all their defects (class order)."""
    if not frame_ids:
        return {}
    ids = list(frame_ids)
    frame_stmt = select(
        frames.c.frame_id,
        frames.c.line_id,
        frames.c.camera_id,
        frames.c.coil_id,
        frames.c.position_m,
        frames.c.captured_at,
        frames.c.height,
        frames.c.width,
        frames.c.model_name,
        frames.c.model_version,
    ).where(frames.c.frame_id.in_(ids))
    defect_stmt = (
        select(
            defects.c.defect_id,
            defects.c.frame_id,
            defects.c.class_id,
            defects.c.rle,
            *defect_measures,
        )
        .where(defects.c.frame_id.in_(ids))
        .order_by(defects.c.frame_id, defects.c.class_id)
    )
    with engine.connect() as conn:
        frame_rows = list(conn.execute(frame_stmt))
        marks: dict[str, list[DefectMark]] = {}
        for d in conn.execute(defect_stmt):
            bbox = (d.bbox_x0, d.bbox_y0, d.bbox_x1, d.bbox_y1)
            mark = DefectMark(
                d.defect_id, d.frame_id, d.class_id, d.rle, d.area_px, bbox, d.probability, d.severity
            )
            marks.setdefault(d.frame_id, []).append(mark)
    return {
        f.frame_id: FrameDetail(**f._mapping, defects=tuple(marks.get(f.frame_id, ()))) for f in frame_rows
    }


def coil_marks(engine: Engine, coil_id: str, limit: int = MAX_STRIP_MARKS) -> list[StripMark]:
    """One mark per defect of the coil: position along it, position across the width."""
    across = (defects.c.bbox_x0 + defects.c.bbox_x1) / 2.0
    stmt = (
        select(
            defects.c.defect_id,
            defects.c.class_id,
            frames.c.position_m,
            across.label("across_px"),
            frames.c.width.label("width_px"),
            defects.c.area_px,
            defects.c.severity,
        )
        .join(frames, defect_frame)
        .where(defects.c.coil_id == coil_id)
        .order_by(frames.c.position_m)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [StripMark(**r._mapping) for r in conn.execute(stmt)]


def frames_of_defects(
    engine: Engine,
    defect_ids: Sequence[int],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    chunk: int = 5000,
) -> dict[str, datetime]:
    """frame id -> capture time of the frames holding these defects, captured in [since, until);
    the ids are sent ``chunk`` at a time (one bound parameter each)."""
    ids = list(defect_ids)
    found: dict[str, datetime] = {}
    for start in range(0, len(ids), chunk):
        stmt = select(defects.c.frame_id, defects.c.captured_at).where(
            defects.c.defect_id.in_(ids[start : start + chunk])
        )
        if since is not None:
            stmt = stmt.where(defects.c.captured_at >= since)
        if until is not None:
            stmt = stmt.where(defects.c.captured_at < until)
        with engine.connect() as conn:
            found.update((r.frame_id, r.captured_at) for r in conn.execute(stmt))
    return found
