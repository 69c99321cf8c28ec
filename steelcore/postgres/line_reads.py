"""What one line stored since a moment: the figures the demo summary, the lifecycle scene and the
pipeline benchmark report about the frames they sent. A run is told apart from earlier ones by its
line id and its start time (``since``); None means every frame of the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, Table, func, select

from steelcore.postgres.schema import alarms, defects, frames


def _of_line(table: Table, line_id: str, since: datetime | None) -> ColumnElement[bool]:
    ours = table.c.line_id == line_id
    return ours if since is None else ours & (table.c.captured_at >= since)


def stored_span(
    engine: Engine, line_id: str, since: datetime | None
) -> tuple[int, datetime | None, datetime | None]:
    """(frames stored, first capture time, last store time) of the line's frames."""
    query = select(func.count(), func.min(frames.c.captured_at), func.max(frames.c.stored_at)).where(
        _of_line(frames, line_id, since)
    )
    with engine.connect() as conn:
        count, first, last = conn.execute(query).one()
    return int(count), first, last


def defects_per_class(engine: Engine, line_id: str, since: datetime | None) -> dict[int, int]:
    """class id -> defects stored (classes without any are absent)."""
    query = (
        select(defects.c.class_id, func.count())
        .where(_of_line(defects, line_id, since))
        .group_by(defects.c.class_id)
    )
    with engine.connect() as conn:
        return {int(c): int(n) for c, n in conn.execute(query).all()}


def alarm_count(engine: Engine, line_id: str, since: datetime | None) -> int:
    """Alarms raised on the line's frames."""
    query = (
        select(func.count())
        .select_from(alarms.join(frames, alarms.c.frame_id == frames.c.frame_id))
        .where(_of_line(frames, line_id, since))
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def frames_stored_since(
    engine: Engine, line_id: str, since: datetime | None, stored_since: datetime
) -> list[tuple[str, datetime]]:
    """(frame id, stored_at) of the line's frames stored at or after ``stored_since``."""
    query = select(frames.c.frame_id, frames.c.stored_at).where(
        _of_line(frames, line_id, since) & (frames.c.stored_at >= stored_since)
    )
    with engine.connect() as conn:
        return [(r.frame_id, r.stored_at) for r in conn.execute(query)]


def defect_masks(engine: Engine, frame_ids: Sequence[str]) -> list[tuple[str, int, str]]:
    """(frame id, class id, RLE) of every defect of these frames."""
    if not frame_ids:
        return []
    query = select(defects.c.frame_id, defects.c.class_id, defects.c.rle).where(
        defects.c.frame_id.in_(list(frame_ids))
    )
    with engine.connect() as conn:
        return [(r.frame_id, int(r.class_id), r.rle) for r in conn.execute(query)]


def frames_judged_by(engine: Engine, line_id: str, since: datetime | None, model_version: int) -> int:
    """How many of the line's frames production version ``model_version`` inferred."""
    query = (
        select(func.count())
        .select_from(frames)
        .where(_of_line(frames, line_id, since), frames.c.model_version == str(model_version))
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def frame_count(engine: Engine, line_id: str) -> int:
    """Frames of the line stored so far."""
    query = select(func.count()).select_from(frames).where(frames.c.line_id == line_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def stored_times(engine: Engine, line_id: str) -> list[datetime]:
    """stored_at of each of the line's frames, in no order."""
    query = select(frames.c.stored_at).where(frames.c.line_id == line_id)
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(query)]


def frame_stamps(engine: Engine, line_id: str) -> list[tuple[datetime, datetime, datetime]]:
    """(captured_at, received_at, stored_at) of each of the line's frames, in no order."""
    query = select(frames.c.captured_at, frames.c.received_at, frames.c.stored_at).where(
        frames.c.line_id == line_id
    )
    with engine.connect() as conn:
        return [(r.captured_at, r.received_at, r.stored_at) for r in conn.execute(query)]
