"""The defect history, one read model for `steel query` and the dashboard's history page.

Every filter is a bound parameter of a SQLAlchemy expression; no SQL is built from strings. The
filters map onto the indexes of the schema: time range -> ix_defects_captured_at,
class + time -> ix_defects_class_id_captured_at, line/camera + time ->
ix_defects_line_id_camera_id_captured_at, coil -> ix_defects_coil_id_class_id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, event, func, select

from steelcore.frame_message import FrameIdentity
from steelcore.postgres.schema import defect_frame, defect_measures, defects, frames

# Rows returned when a caller gives no limit; `steel query --limit 0` asks for all.
DEFAULT_LIMIT = 1000
# Coil summaries report defect density per this many metres of strip.
DENSITY_PER_M = 100.0


@dataclass(frozen=True)
class DefectFilters:
    """Which defects to return. Times are aware datetimes: [time_from, time_to) on captured_at."""

    time_from: datetime | None = None
    time_to: datetime | None = None
    line_id: str | None = None
    camera_id: str | None = None
    coil_id: str | None = None
    class_ids: tuple[int, ...] | None = None
    min_area: int | None = None
    min_severity: float | None = None
    limit: int | None = DEFAULT_LIMIT  # None = no limit
    offset: int = 0

    def __post_init__(self) -> None:
        for name in ("time_from", "time_to"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
        if self.time_from is not None and self.time_to is not None and self.time_from >= self.time_to:
            raise ValueError(
                f"time_from {self.time_from.isoformat()} is not before time_to {self.time_to.isoformat()}"
            )
        if self.class_ids is not None and (not self.class_ids or min(self.class_ids) < 1):
            raise ValueError(f"class_ids must be a non-empty list of ids >= 1, got {self.class_ids}")
        if self.min_area is not None and self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area}")
        if self.min_severity is not None and not 0.0 <= self.min_severity <= 1.0:
            raise ValueError(f"min_severity must be within [0, 1], got {self.min_severity}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be positive or None (no limit), got {self.limit}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")


@dataclass(frozen=True)
class DefectRow(FrameIdentity):
    """A stored defect with its frame's identity; build it by keyword (the identity fields come first)."""

    defect_id: int
    class_id: int
    area_px: int
    bbox: tuple[int, int, int, int]
    probability: float
    severity: float
    rle: str
    height: int
    width: int
    model_name: str
    model_version: str
    image_ref: str | None


@dataclass(frozen=True)
class CoilSummary:
    coil_id: str
    line_id: str
    frames: int
    first_captured_at: datetime
    last_captured_at: datetime
    length_m: float  # max - min frame position seen; 0 for a coil seen in one frame
    defects_by_class: dict[int, int] = field(default_factory=dict)

    def per_100m(self) -> dict[int, float | None]:
        """Defects per DENSITY_PER_M metres per class; None when the length is unknown (zero)."""
        if self.length_m <= 0:
            return {c: None for c in self.defects_by_class}
        return {c: n * DENSITY_PER_M / self.length_m for c, n in self.defects_by_class.items()}


def _where(filters: DefectFilters) -> list:
    clauses = []
    if filters.time_from is not None:
        clauses.append(defects.c.captured_at >= filters.time_from)
    if filters.time_to is not None:
        clauses.append(defects.c.captured_at < filters.time_to)
    if filters.line_id is not None:
        clauses.append(defects.c.line_id == filters.line_id)
    if filters.camera_id is not None:
        clauses.append(defects.c.camera_id == filters.camera_id)
    if filters.coil_id is not None:
        clauses.append(defects.c.coil_id == filters.coil_id)
    if filters.class_ids is not None:
        clauses.append(defects.c.class_id.in_(sorted(set(filters.class_ids))))
    if filters.min_area is not None:
        clauses.append(defects.c.area_px >= filters.min_area)
    if filters.min_severity is not None:
        clauses.append(defects.c.severity >= filters.min_severity)
    return clauses


def defects_select(filters: DefectFilters) -> Select:
    """The statement behind query_defects (exposed so tests and benchmarks can EXPLAIN it)."""
    stmt = (
        select(
            defects.c.defect_id,
            defects.c.frame_id,
            defects.c.class_id,
            defects.c.captured_at,
            defects.c.line_id,
            defects.c.camera_id,
            defects.c.coil_id,
            frames.c.position_m,
            *defect_measures,
            defects.c.rle,
            frames.c.height,
            frames.c.width,
            frames.c.model_name,
            frames.c.model_version,
            frames.c.image_ref,
        )
        .join(frames, defect_frame)
        .where(*_where(filters))
        # Newest first; frame and class break ties so pages never overlap.
        .order_by(defects.c.captured_at.desc(), defects.c.frame_id, defects.c.class_id)
        .offset(filters.offset)
    )
    if filters.limit is not None:
        stmt = stmt.limit(filters.limit)
    return stmt


def query_defects(engine: Engine, filters: DefectFilters | None = None) -> list[DefectRow]:
    """Defects matching ``filters``, newest first."""
    filters = filters or DefectFilters()
    with engine.connect() as conn:
        result = conn.execute(defects_select(filters))
        return [_to_row(m) for m in result.mappings()]


def count_defects(engine: Engine, filters: DefectFilters | None = None) -> int:
    """How many defects match ``filters`` (limit and offset ignored), for paging."""
    filters = filters or DefectFilters()
    stmt = select(func.count()).select_from(defects).where(*_where(filters))
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def _to_row(m: dict) -> DefectRow:
    values = dict(m)
    bbox = tuple(int(values.pop(k)) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
    return DefectRow(bbox=bbox, **values)  # type: ignore[arg-type]


def coil_summary(
    engine: Engine,
    coil_ids: Sequence[str] | None = None,
    *,
    line_id: str | None = None,
    time_from: datetime | None = None,
    time_to: datetime | None = None,
    limit: int | None = None,
) -> list[CoilSummary]:
    """Per coil: frames seen, time span, length from frame positions and defects per class.
    Coils are selected by id, or by line and/or the time their frames were captured; ``limit``
    keeps the first coils by id, in the database (a year of coils is never fetched to show 500)."""
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive or None, got {limit}")
    frame_where = []
    if coil_ids is not None:
        frame_where.append(frames.c.coil_id.in_(list(coil_ids)))
    if line_id is not None:
        frame_where.append(frames.c.line_id == line_id)
    if time_from is not None:
        frame_where.append(frames.c.captured_at >= time_from)
    if time_to is not None:
        frame_where.append(frames.c.captured_at < time_to)
    stats = (
        select(
            frames.c.coil_id,
            func.min(frames.c.line_id).label("line_id"),
            func.count().label("frames"),
            func.min(frames.c.captured_at).label("first_captured_at"),
            func.max(frames.c.captured_at).label("last_captured_at"),
            (func.max(frames.c.position_m) - func.min(frames.c.position_m)).label("length_m"),
        )
        .where(*frame_where)
        .group_by(frames.c.coil_id)
        .order_by(frames.c.coil_id)
        .limit(limit)
    )
    counts = (
        select(defects.c.coil_id, defects.c.class_id, func.count().label("n"))
        .join(frames, defect_frame)
        .where(*frame_where)
        .group_by(defects.c.coil_id, defects.c.class_id)
    )
    with engine.connect() as conn:
        summaries = {row.coil_id: row for row in conn.execute(stats)}
        if limit is not None:  # count defects of the coils kept only
            counts = counts.where(defects.c.coil_id.in_(list(summaries)))
        by_coil: dict[str, dict[int, int]] = {}
        for row in conn.execute(counts):
            by_coil.setdefault(row.coil_id, {})[int(row.class_id)] = int(row.n)
    return [
        CoilSummary(
            coil_id=coil,
            line_id=row.line_id,
            frames=int(row.frames),
            first_captured_at=row.first_captured_at,
            last_captured_at=row.last_captured_at,
            length_m=float(row.length_m),
            defects_by_class=dict(sorted(by_coil.get(coil, {}).items())),
        )
        for coil, row in summaries.items()
    ]


def coil_summary_of(engine: Engine, filters: DefectFilters, limit: int | None = None) -> list[CoilSummary]:
    """coil_summary of the coils ``filters`` select: its coil, else its line and time range (the other
    filters are about defects, not coils)."""
    return coil_summary(
        engine,
        [filters.coil_id] if filters.coil_id else None,
        line_id=filters.line_id,
        time_from=filters.time_from,
        time_to=filters.time_to,
        limit=limit,
    )


def plan_without_index_scans(engine: Engine) -> None:
    """Make every new connection of ``engine`` plan without index scans: the plan Postgres would be
    left with without the schema's indexes (the baseline of `steel bench queries`)."""

    @event.listens_for(engine, "connect")
    def _no_index_scans(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET enable_indexscan = off")
            cursor.execute("SET enable_bitmapscan = off")
            cursor.execute("SET enable_indexonlyscan = off")
        dbapi_connection.commit()


def explain_plan(engine: Engine, filters: DefectFilters) -> str:
    """Postgres's plan for query_defects(filters), for tests and `steel bench queries`. The values
    stay bound parameters; only IN lists are expanded to one placeholder per value first."""
    compiled = defects_select(filters).compile(engine, compile_kwargs={"render_postcompile": True})
    with engine.connect() as conn:
        return "\n".join(conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars())
