"""A large synthetic defect history for `steel bench queries` (and its test), written by Postgres
itself: the product's schema is filled in ways only SQL does quickly, so the SQL lives here.

Rows are generated with generate_series inside INSERT ... SELECT (no Python round trip per row),
in chunks so progress can be shown. The shape follows a busy plant over SPAN_DAYS:
- 3 lines x 4 cameras, frames evenly spread in time, coils of 300 positions per camera;
- per frame two defects of the common classes 1-3 and, on one frame in 25, a rare class 4;
- areas spread over 10..5,000 px, severity from area; an alarm on one defect in 10.
The whole history ends at ``end`` (the benchmark's "now").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, text

SPAN_DAYS = 30
LINES = 3
CAMERAS = 4
POSITIONS_PER_COIL = 300
DEFECTS_PER_FRAME = 2 + 1 / 25  # two common classes, plus class 4 on one frame in 25
CHUNK_FRAMES = 50_000


@dataclass(frozen=True)
class SeedShape:
    frames: int
    end: datetime

    @property
    def step_s(self) -> float:
        return SPAN_DAYS * 86400 / self.frames

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=SPAN_DAYS)


def frames_for(defect_rows: int) -> int:
    if defect_rows < 1000:
        raise ValueError(f"need at least 1000 defect rows for a meaningful benchmark, got {defect_rows}")
    return round(defect_rows / DEFECTS_PER_FRAME)


# Expressions of the frame number i shared by every statement.
_LINE = f"'L' || (1 + i % {LINES})"
_J = f"(i / {LINES})"  # frame number within its line
_CAMERA = f"'C' || (1 + {_J} % {CAMERAS})"
_COIL = f"'K' || (1 + i % {LINES}) || '-' || ({_J} / {CAMERAS * POSITIONS_PER_COIL})"
_POSITION = f"(({_J} / {CAMERAS}) % {POSITIONS_PER_COIL}) * 1.5"
_CAPTURED = "CAST(:start AS timestamptz) + i * :step * interval '1 second'"

_FRAMES = f"""
INSERT INTO frames (frame_id, line_id, camera_id, coil_id, position_m, height, width, captured_at,
                    received_at, stored_at, decode_ms, infer_ms, store_ms, model_name, model_version)
SELECT 'f' || lpad(i::text, 10, '0'), {_LINE}, {_CAMERA}, {_COIL}, {_POSITION}, 256, 1600,
       {_CAPTURED}, {_CAPTURED} + interval '20 ms', {_CAPTURED} + interval '120 ms',
       2 + i % 5, 60 + i % 40, 5 + i % 7, 'default', '1'
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i
"""

_DEFECTS = f"""
INSERT INTO defects (frame_id, class_id, captured_at, line_id, camera_id, coil_id, rle, area_px,
                     bbox_x0, bbox_y0, bbox_x1, bbox_y1, probability, severity)
SELECT 'f' || lpad(i::text, 10, '0'), c, {_CAPTURED}, {_LINE}, {_CAMERA}, {_COIL}, '1 4', a,
       0, 0, 3, 0, 0.9, least(1.0, a / 4000.0) * 0.9
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i,
     LATERAL (VALUES (0), (1), (2)) AS k(k),
     LATERAL (SELECT CASE WHEN k = 2 THEN 4 ELSE 1 + (i + k) % 3 END AS c,
                     10 + (i * 7919 + k * 104729) % 4990 AS a) AS v
WHERE k < 2 OR i % 25 = 0
"""

_ALARMS = f"""
INSERT INTO alarms (frame_id, class_id, probability, area_px, raised_at, stream_entry_id, published_at)
SELECT 'f' || lpad(i::text, 10, '0'), 1 + i % 3, 0.9, 10 + (i * 7919) % 4990,
       {_CAPTURED} + interval '300 ms', i || '-0', {_CAPTURED} + interval '310 ms'
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i
WHERE i % 10 = 0
"""


def seed_history(engine: Engine, shape: SeedShape, progress: Callable[[int], None] | None = None) -> None:
    """Fill an empty, migrated database (steelcore.postgres.migrate.upgrade) with ``shape``, then ANALYZE."""
    n_coils_per_line = shape.frames // LINES // (CAMERAS * POSITIONS_PER_COIL) + 1
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(
            text("INSERT INTO lines (line_id) SELECT 'L' || l FROM generate_series(1, :n) AS l"), {"n": LINES}
        )
        conn.execute(
            text(
                "INSERT INTO cameras (line_id, camera_id) SELECT 'L' || l, 'C' || c "
                "FROM generate_series(1, :lines) AS l, generate_series(1, :cameras) AS c"
            ),
            {"lines": LINES, "cameras": CAMERAS},
        )
        conn.execute(
            text(
                "INSERT INTO coils (coil_id, line_id) SELECT 'K' || l || '-' || k, 'L' || l "
                "FROM generate_series(1, :lines) AS l, generate_series(0, :coils) AS k"
            ),
            {"lines": LINES, "coils": n_coils_per_line},
        )
    for lo in range(0, shape.frames, CHUNK_FRAMES):
        hi = min(shape.frames, lo + CHUNK_FRAMES) - 1
        params = {"lo": lo, "hi": hi, "start": shape.start, "step": shape.step_s}
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            for statement in (_FRAMES, _DEFECTS, _ALARMS):
                conn.execute(text(statement), params)
        if progress is not None:
            progress(hi - lo + 1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
