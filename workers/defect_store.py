"""The durable write of one batch of frame results: frames, their defects, alarms and the images of
defective frames (workers/frame_images.py), in one transaction.

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
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Select, and_, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert

from steelcore.postgres.schema import alarms, cameras, coils, defects, frame_images, frames, lines
from steelcore.settings import Settings, get_settings
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from workers.frame_images import image_encoding

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# Multiples of a class's alarm area at which the area term of severity saturates (see docstring).
SEVERITY_FULL_SCALE = 10


def max_rle_chars(height: int, width: int) -> int:
    """The longest RLE string a height x width mask can need (every other pixel set: one
    "start length" pair per pixel pair). A longer string cannot describe a mask of that frame,
    so the store refuses it instead of writing megabytes of text into a row."""
    pixels = height * width
    digits = len(str(pixels))
    return (pixels + 1) // 2 * (2 * digits + 2)


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be timezone-aware (got naive {value.isoformat()})")


def _require_probability(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be within [0, 1], got {value}")


@dataclass(frozen=True)
class DefectRecord:
    """One detected defect class on a frame (the union of that class's mask regions)."""

    class_id: int
    rle: str  # steelcore.rle encoding of the class mask at the frame's size
    area_px: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1: inclusive pixel bounds of the mask
    probability: float

    def __post_init__(self) -> None:
        if self.class_id < 1:
            raise ValueError(f"class_id must be >= 1, got {self.class_id}")
        if self.area_px <= 0:
            raise ValueError(f"area_px must be positive, got {self.area_px} (class {self.class_id})")
        if not self.rle.strip():
            raise ValueError(f"rle is empty for a defect of class {self.class_id}")
        x0, y0, x1, y1 = self.bbox
        if not (0 <= x0 <= x1 and 0 <= y0 <= y1):
            raise ValueError(f"bbox must satisfy 0 <= x0 <= x1 and 0 <= y0 <= y1, got {self.bbox}")
        _require_probability("probability", self.probability)

    @classmethod
    def from_mask(cls, class_id: int, mask: np.ndarray, probability: float) -> DefectRecord | None:
        """The record of a 2-D class mask; None when the mask is empty."""
        import numpy as np

        from steelcore.rle import encode

        ys, xs = np.nonzero(mask)
        if xs.size == 0:
            return None
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        return cls(class_id, encode(mask), int(xs.size), bbox, float(probability))


@dataclass(frozen=True)
class AlarmRecord:
    """An alarm fired for one (frame, class); the frame must carry a defect of that class."""

    class_id: int
    probability: float
    area_px: int
    raised_at: datetime
    # Set when the alarm was published to the Redis stream before this write; else NULL = outbox.
    stream_entry_id: str | None = None
    published_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_probability("alarm probability", self.probability)
        _require_aware("raised_at", self.raised_at)
        _require_aware("published_at", self.published_at)


@dataclass(frozen=True)
class FrameRecord:
    """Everything stored about one inferred frame."""

    frame_id: str
    line_id: str
    camera_id: str
    coil_id: str
    position_m: float
    captured_at: datetime
    received_at: datetime
    model_name: str
    model_version: str
    defects: tuple[DefectRecord, ...] = ()
    alarms: tuple[AlarmRecord, ...] = ()
    class_probs: tuple[float, ...] | None = None  # index 0 = class 1; None without a classifier
    decode_ms: float | None = None
    infer_ms: float | None = None
    store_ms: float | None = None
    image_ref: str | None = None
    height: int = FRAME_HEIGHT
    width: int = FRAME_WIDTH
    # The received image bytes (JPEG as in the Kafka message, never re-encoded). Kept in
    # frame_images when the frame has a defect; ignored for a defect-free frame.
    image: bytes | None = field(default=None, repr=False)
    # The encoding the frame header declared (the worker decoded the image by it); None = tell it
    # from the bytes, for records made without a header.
    image_encoding: str | None = None

    def __post_init__(self) -> None:
        for name in ("frame_id", "line_id", "camera_id", "coil_id", "model_name", "model_version"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string")
        if not self.position_m >= 0:
            raise ValueError(f"position_m must be >= 0, got {self.position_m} (frame {self.frame_id})")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"frame size must be positive, got {self.height}x{self.width}")
        _require_aware("captured_at", self.captured_at)
        _require_aware("received_at", self.received_at)
        class_ids = [d.class_id for d in self.defects]
        if len(set(class_ids)) != len(class_ids):
            raise ValueError(f"frame {self.frame_id} has two defects of one class: {class_ids}")
        rle_limit = max_rle_chars(self.height, self.width)
        for d in self.defects:
            if len(d.rle) > rle_limit or d.area_px > self.height * self.width:
                raise ValueError(
                    f"frame {self.frame_id}: class {d.class_id} mask ({len(d.rle)} RLE characters, "
                    f"{d.area_px} px) cannot belong to a {self.width}x{self.height} frame "
                    f"(at most {rle_limit} characters)"
                )
            if d.bbox[2] >= self.width or d.bbox[3] >= self.height:
                raise ValueError(
                    f"frame {self.frame_id}: class {d.class_id} bbox {d.bbox} "
                    f"outside {self.width}x{self.height}"
                )
        alarm_ids = [a.class_id for a in self.alarms]
        if len(set(alarm_ids)) != len(alarm_ids):
            raise ValueError(f"frame {self.frame_id} has two alarms of one class: {alarm_ids}")
        missing = set(alarm_ids) - set(class_ids)
        if missing:
            raise ValueError(f"frame {self.frame_id}: alarm for class {sorted(missing)} without a defect")
        for p in self.class_probs or ():
            _require_probability("class probability", p)
        if self.image is not None and self.defects:
            # raises ValueError when unusable
            image_encoding(self.image, self.height, self.width, self.image_encoding)

    @property
    def keeps_image(self) -> bool:
        """Whether the store keeps this frame's image (workers/frame_images.py has the policy)."""
        return self.image is not None and bool(self.defects)


@dataclass(frozen=True)
class StoreResult:
    new_frame_ids: tuple[str, ...]  # stored by this call, sorted
    duplicate_frame_ids: tuple[str, ...] = ()  # already stored (redelivery) or repeated in the batch
    defects_written: int = 0
    alarms_written: int = 0
    images_written: int = 0
    elapsed_ms: float = 0.0
    new_alarms: tuple[tuple[str, int], ...] = ()  # (frame_id, class_id) of the alarms written now


def severity(probability: float, area_px: int, class_id: int, alarm_min_area_px: Sequence[int]) -> float:
    """Severity in [0, 1] as defined in the module docstring. A class beyond the alarm table
    (another model's classes) is scaled by the largest alarm area."""
    if 1 <= class_id <= len(alarm_min_area_px):
        reference = alarm_min_area_px[class_id - 1]
    else:
        reference = max(alarm_min_area_px)
    return probability * min(1.0, area_px / (SEVERITY_FULL_SCALE * max(1, reference)))


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


# --- the alarm outbox ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingAlarm:
    """A stored alarm not yet confirmed on the Redis stream, with what a publisher needs."""

    alarm_id: int
    frame_id: str
    class_id: int
    probability: float
    area_px: int
    raised_at: datetime
    line_id: str
    camera_id: str
    coil_id: str
    captured_at: datetime
    position_m: float


def _unpublished(limit: int, raised_before: datetime | None = None) -> Select:
    """Alarms stored but not yet published, oldest first (served by ix_alarms_unpublished)."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    stmt = (
        select(
            alarms.c.alarm_id,
            alarms.c.frame_id,
            alarms.c.class_id,
            alarms.c.probability,
            alarms.c.area_px,
            alarms.c.raised_at,
            defects.c.line_id,
            defects.c.camera_id,
            defects.c.coil_id,
            defects.c.captured_at,
            frames.c.position_m,
        )
        .join(defects, and_(defects.c.frame_id == alarms.c.frame_id, defects.c.class_id == alarms.c.class_id))
        .join(frames, frames.c.frame_id == alarms.c.frame_id)
        .where(alarms.c.published_at.is_(None))
        .order_by(alarms.c.raised_at, alarms.c.alarm_id)
        .limit(limit)
    )
    if raised_before is not None:
        _require_aware("raised_before", raised_before)
        stmt = stmt.where(alarms.c.raised_at < raised_before)
    return stmt


def unpublished_alarms(engine: Engine, limit: int = 1000) -> list[PendingAlarm]:
    """Alarms stored but not yet published, oldest first (served by ix_alarms_unpublished)."""
    with engine.connect() as conn:
        return [PendingAlarm(**row._mapping) for row in conn.execute(_unpublished(limit))]


def relay_unpublished_alarms(
    engine: Engine,
    publish: Callable[[Sequence[PendingAlarm]], Sequence[str]],
    raised_before: datetime,
    limit: int,
) -> int:
    """Publish alarms raised before ``raised_before`` and still unpublished, oldest first, and
    mark them with the stream entry ids ``publish`` returns; the number relayed.

    One transaction holds the rows (FOR UPDATE SKIP LOCKED) from the select to the mark, so the
    relays of several workers each take different rows instead of publishing one alarm twice. If
    ``publish`` raises, nothing is marked and its error propagates; if the mark fails after a
    publish, the next relay publishes again under the same alarm id (at least once)."""
    stmt = _unpublished(limit, raised_before).with_for_update(of=alarms, skip_locked=True)
    with engine.begin() as conn:
        pending = [PendingAlarm(**row._mapping) for row in conn.execute(stmt)]
        if not pending:
            return 0
        entry_ids = list(publish(pending))
        if len(entry_ids) != len(pending):
            raise RuntimeError(f"published {len(pending)} alarms, got {len(entry_ids)} entry ids")
        when = datetime.now(UTC)
        conn.execute(
            update(alarms)
            .where(alarms.c.alarm_id == bindparam("a"))
            .values(stream_entry_id=bindparam("e"), published_at=bindparam("t")),
            [{"a": p.alarm_id, "e": e, "t": when} for p, e in zip(pending, entry_ids, strict=True)],
        )
    return len(pending)


def mark_alarms_published(
    engine: Engine, published: Iterable[tuple[str, int, str]], published_at: datetime | None = None
) -> int:
    """Record (frame_id, class_id, stream_entry_id) of alarms now on the Redis stream. An alarm
    already marked keeps its first entry id. Returns the number of alarms marked now."""
    when = published_at or datetime.now(UTC)
    _require_aware("published_at", when)
    rows = [{"f": f, "c": c, "e": e, "t": when} for f, c, e in published]
    if not rows:
        return 0
    stmt = (
        update(alarms)
        .where(
            alarms.c.frame_id == bindparam("f"),
            alarms.c.class_id == bindparam("c"),
            alarms.c.published_at.is_(None),
        )
        .values(stream_entry_id=bindparam("e"), published_at=bindparam("t"))
    )
    with engine.begin() as conn:
        return conn.execute(stmt, rows).rowcount
