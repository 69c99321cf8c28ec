"""What the live and health pages read: defect rates per camera, throughput and latency, the alarm
feed, the current coil and model, the filter choices. Frames and their defects are read by
frame_reads, the history by defect_history.

Every query is a SQLAlchemy expression with bound parameters, bounded by a time window or a
LIMIT, and served by an index of the schema: windows on ``captured_at`` use
ix_frames_captured_at / ix_defects_captured_at, the alarm feed ix_alarms_raised_at. Times are
those of the frames (``captured_at``), so a window means "frames captured in the last N seconds",
whichever worker stored them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select

from steelcore.postgres.schema import alarm_columns, alarm_defect, alarms, cameras, coils, defects, frames
from steelcore.severstal import CLASS_IDS

# Shortest span a rate is computed over: the first frames of a new line do not read as a burst.
MIN_COVERED_S = 1.0
PERCENTILES = (0.5, 0.95)


@dataclass(frozen=True)
class CameraRate:
    line_id: str
    camera_id: str
    class_id: int
    frames: int  # frames of this camera in the window
    defects: int  # of them, the frames with a defect of this class (one defect per frame and class)

    @property
    def rate(self) -> float:
        return self.defects / self.frames if self.frames else 0.0


@dataclass(frozen=True)
class Throughput:
    window_s: float
    frames: int
    newest_captured_at: datetime | None  # of any frame stored, in or before the window
    latency_ms: dict[str, tuple[float | None, float | None]]  # stage -> (p50, p95)
    # The part of the window frames could have been captured in: all of it once frames older
    # than the window exist, else from the first frame on (a line that started 60 s ago has sent
    # 60 s of frames, not 300). None = the whole window.
    covered_s: float | None = None

    @property
    def frames_per_s(self) -> float:
        seconds = self.window_s if self.covered_s is None else self.covered_s
        return self.frames / seconds if seconds > 0 else 0.0

    def event_lag_s(self, now: datetime) -> float | None:
        """Now minus the capture time of the newest stored frame: how far the workers trail."""
        if self.newest_captured_at is None:
            return None
        return max(0.0, (now - self.newest_captured_at).total_seconds())


@dataclass(frozen=True)
class AlarmRow:
    alarm_id: int
    defect_id: int
    frame_id: str
    class_id: int
    probability: float
    area_px: int
    raised_at: datetime
    line_id: str
    camera_id: str
    coil_id: str
    published: bool
    acknowledged_by: str | None


def camera_rates(
    engine: Engine, since: datetime, *, until: datetime | None = None, line_id: str | None = None
) -> list[CameraRate]:
    """Per camera and class: frames in [since, until) and how many had a defect of that class."""
    frame_where = [frames.c.captured_at >= since]
    defect_where = [defects.c.captured_at >= since]
    if until is not None:
        frame_where.append(frames.c.captured_at < until)
        defect_where.append(defects.c.captured_at < until)
    if line_id is not None:
        frame_where.append(frames.c.line_id == line_id)
        defect_where.append(defects.c.line_id == line_id)
    frame_counts = (
        select(frames.c.line_id, frames.c.camera_id, func.count().label("n"))
        .where(*frame_where)
        .group_by(frames.c.line_id, frames.c.camera_id)
    )
    defect_counts = (
        select(defects.c.line_id, defects.c.camera_id, defects.c.class_id, func.count().label("n"))
        .where(*defect_where)
        .group_by(defects.c.line_id, defects.c.camera_id, defects.c.class_id)
    )
    with engine.connect() as conn:
        totals = {(r.line_id, r.camera_id): int(r.n) for r in conn.execute(frame_counts)}
        found = {(r.line_id, r.camera_id, int(r.class_id)): int(r.n) for r in conn.execute(defect_counts)}
    # Every camera that sent frames gets a row per class, zero included, so a quiet camera shows.
    class_ids = sorted(set(CLASS_IDS).union(k[2] for k in found))
    return [
        CameraRate(line, camera, class_id, n, found.get((line, camera, class_id), 0))
        for (line, camera), n in sorted(totals.items())
        for class_id in class_ids
    ]


def throughput(engine: Engine, since: datetime, until: datetime, *, line_id: str | None = None) -> Throughput:
    """Frames captured in [since, until), latency percentiles of each stage and end to end."""
    if until <= since:
        raise ValueError(f"until {until.isoformat()} is not after since {since.isoformat()}")
    where = [frames.c.captured_at >= since, frames.c.captured_at < until]
    newest_where = [frames.c.captured_at < until]
    if line_id is not None:
        where.append(frames.c.line_id == line_id)
        newest_where.append(frames.c.line_id == line_id)
    end_to_end_ms = func.extract("epoch", frames.c.stored_at - frames.c.captured_at) * 1000.0
    stages = {"decode": frames.c.decode_ms, "infer": frames.c.infer_ms, "store": frames.c.store_ms}
    stages["capture to stored"] = end_to_end_ms
    columns = [func.count().label("n"), func.min(frames.c.captured_at).label("oldest")]
    for name, expr in stages.items():
        for q in PERCENTILES:
            columns.append(func.percentile_cont(q).within_group(expr).label(f"{name}@{q}"))
    with engine.connect() as conn:
        row = conn.execute(select(*columns).where(*where)).mappings().one()
        newest = conn.execute(select(func.max(frames.c.captured_at)).where(*newest_where)).scalar_one()
        older_where = [frames.c.captured_at < since, *newest_where[1:]]
        before_window = conn.execute(select(frames.c.captured_at).where(*older_where).limit(1)).first()
    latency = {
        name: tuple(_opt_float(row[f"{name}@{q}"]) for q in PERCENTILES)  # type: ignore[misc]
        for name in stages
    }
    window_s = (until - since).total_seconds()
    covered_s = window_s
    if before_window is None and row["oldest"] is not None:
        covered_s = min(window_s, max(MIN_COVERED_S, (until - row["oldest"]).total_seconds()))
    return Throughput(window_s, int(row["n"]), newest, latency, covered_s)  # type: ignore[arg-type]


def frames_per_minute(
    engine: Engine, since: datetime, until: datetime, *, line_id: str | None = None
) -> list[tuple[datetime, int, float | None]]:
    """(minute, frames captured, median capture-to-stored ms) per minute of [since, until)."""
    minute = func.date_trunc("minute", frames.c.captured_at).label("minute")
    end_to_end_ms = func.extract("epoch", frames.c.stored_at - frames.c.captured_at) * 1000.0
    where = [frames.c.captured_at >= since, frames.c.captured_at < until]
    if line_id is not None:
        where.append(frames.c.line_id == line_id)
    stmt = (
        select(
            minute,
            func.count().label("n"),
            func.percentile_cont(0.5).within_group(end_to_end_ms).label("p50"),
        )
        .where(*where)
        .group_by(minute)
        .order_by(minute)
    )
    with engine.connect() as conn:
        return [(r.minute, int(r.n), _opt_float(r.p50)) for r in conn.execute(stmt)]


def recent_alarms(engine: Engine, limit: int = 20, *, line_id: str | None = None) -> list[AlarmRow]:
    """The newest alarms, newest first."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    stmt = (
        select(
            *alarm_columns,
            defects.c.defect_id,
            alarms.c.published_at.is_not(None).label("published"),
            alarms.c.acknowledged_by,
        )
        .join(defects, alarm_defect)
        .order_by(alarms.c.raised_at.desc(), alarms.c.alarm_id.desc())
        .limit(limit)
    )
    if line_id is not None:
        stmt = stmt.where(defects.c.line_id == line_id)
    with engine.connect() as conn:
        return [AlarmRow(**row._mapping) for row in conn.execute(stmt)]


def current_coil(engine: Engine, *, line_id: str | None = None) -> str | None:
    """The coil of the newest stored frame (of ``line_id``)."""
    stmt = select(frames.c.coil_id).order_by(frames.c.captured_at.desc()).limit(1)
    if line_id is not None:
        stmt = stmt.where(frames.c.line_id == line_id)
    with engine.connect() as conn:
        return conn.execute(stmt).scalar_one_or_none()


def model_in_use(engine: Engine) -> tuple[str, str] | None:
    """(model name, version) that inferred the newest stored frame."""
    stmt = select(frames.c.model_name, frames.c.model_version).order_by(frames.c.captured_at.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return (row.model_name, row.model_version) if row else None


def lines_and_cameras(engine: Engine) -> list[tuple[str, str]]:
    """Every (line, camera) seen, sorted: the choices of the filters."""
    with engine.connect() as conn:
        stmt = select(cameras.c.line_id, cameras.c.camera_id).order_by(cameras.c.line_id, cameras.c.camera_id)
        return [(r.line_id, r.camera_id) for r in conn.execute(stmt)]


def recent_coils(engine: Engine, limit: int = 200, *, line_id: str | None = None) -> list[str]:
    """Coils first seen most recently, newest first."""
    stmt = select(coils.c.coil_id).order_by(coils.c.first_seen_at.desc(), coils.c.coil_id).limit(limit)
    if line_id is not None:
        stmt = stmt.where(coils.c.line_id == line_id)
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
