"""Seeded defect data for the dashboard's tests: real Severstal frames and masks, stored through
the real write path (DefectStore), with times relative to "now" so the live window holds them.

Layout (all frames 1600x256):
- line L1, cameras C1 and C2: RECENT_PER_CAMERA frames each, one every STEP_S seconds ending
  just before ``now``, on coil K-L1-0001; every DEFECT_EVERY-th frame carries the masks of one
  of the three labelled real frames (cycled) and its real image bytes, as a worker would;
- line L2, camera C1: OLD_FRAMES frames two days earlier on coil K-L2-0001, every other one
  defective.
Alarms follow the production rule (workers.alarm_rules with default Settings).
Tests compute expectations from the returned records, never from the dashboard's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from sqlalchemy import Engine, insert, select, text

from steelcore.kaggle_csv import read_labels
from steelcore.paths import SEVERSTAL_SAMPLE_DIR
from steelcore.postgres import migrate, schema
from steelcore.postgres.defect_writes import DefectStore
from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord
from steelcore.postgres.scratch import scratch_database
from steelcore.rle import decode
from steelcore.settings import Settings
from steelcore.severstal import CLASS_IDS, FRAME_SHAPE
from workers.alarm_rules import AlarmRule

RECENT_PER_CAMERA = 30
STEP_S = 2.0
DEFECT_EVERY = 3
OLD_FRAMES = 20
PROBABILITY = 0.9
RECENT_COIL = "K-L1-0001"
SHADOW_ONLY_RLE = "1 100"  # a class-3 mark only the shadow sees, on a frame production found clean
OLD_COIL = "K-L2-0001"


@lru_cache(maxsize=1)
def real_samples() -> tuple[tuple[str, bytes, dict[int, str]], ...]:
    """(image id, image bytes as stored, {class id: rle}) of the labelled real frames."""
    labels = read_labels(SEVERSTAL_SAMPLE_DIR / "train.csv")
    samples = []
    for image_id in sorted(labels):
        rles = {c: r for c, r in zip(CLASS_IDS, labels[image_id], strict=True) if r}
        if rles:
            samples.append((image_id, (SEVERSTAL_SAMPLE_DIR / "images" / image_id).read_bytes(), rles))
    if len(samples) < 3:
        raise RuntimeError(f"expected 3 labelled frames in {SEVERSTAL_SAMPLE_DIR}, found {len(samples)}")
    return tuple(samples)


def _frame(
    index: int, *, line: str, camera: str, coil: str, position_m: float, at: datetime, sample: int | None
) -> FrameRecord:
    """Frame ``index``; with the image and masks of real sample ``sample`` (None: defect-free)."""
    found: tuple[DefectRecord, ...] = ()
    raised: tuple[AlarmRecord, ...] = ()
    image = None
    if sample is not None:
        _, image, rles = real_samples()[sample % len(real_samples())]
        records = [DefectRecord.from_mask(c, decode(r, FRAME_SHAPE), PROBABILITY) for c, r in rles.items()]
        found = tuple(r for r in records if r is not None)
        rule = AlarmRule.from_settings(Settings())
        raised = tuple(
            AlarmRecord(d.class_id, d.probability, d.area_px, at + timedelta(milliseconds=300))
            for d in found
            if rule.fires(d.class_id - 1, d.probability, d.area_px)
        )
    return FrameRecord(
        frame_id=f"{line}-{camera}-seed-{index:05d}",
        line_id=line,
        camera_id=camera,
        coil_id=coil,
        position_m=position_m,
        captured_at=at,
        received_at=at + timedelta(milliseconds=40),
        model_name="default",
        model_version="1",
        defects=found,
        alarms=raised,
        class_probs=(0.1, 0.1, 0.1, 0.1),
        decode_ms=3.0 + index % 5,
        infer_ms=60.0 + 10 * (index % 4),
        store_ms=8.0,
        image=image,
    )


def seed_records(now: datetime) -> list[FrameRecord]:
    records = []
    for cam_index, camera in enumerate(("C1", "C2")):
        for i in range(RECENT_PER_CAMERA):
            index = cam_index * RECENT_PER_CAMERA + i
            at = now - timedelta(seconds=STEP_S * (RECENT_PER_CAMERA - i))
            records.append(
                _frame(
                    index,
                    line="L1",
                    camera=camera,
                    coil=RECENT_COIL,
                    position_m=1.5 * i,
                    at=at,
                    sample=i // DEFECT_EVERY + cam_index if i % DEFECT_EVERY == 0 else None,
                )
            )
    old_start = now - timedelta(days=2)
    for i in range(OLD_FRAMES):
        records.append(
            _frame(
                1000 + i,
                line="L2",
                camera="C1",
                coil=OLD_COIL,
                position_m=2.0 * i,
                at=old_start + timedelta(seconds=10 * i),
                sample=i // 2 if i % 2 == 0 else None,
            )
        )
    return records


def seed(engine: Engine, now: datetime | None = None) -> list[FrameRecord]:
    """Store the seed through the worker's write path."""
    records = seed_records(now or datetime.now(UTC))
    DefectStore(engine).write_batch(records)
    with engine.begin() as conn:
        # As if a worker keeping up had stored each frame as it came (the batch has one server time).
        conn.execute(text("UPDATE frames SET stored_at = received_at + store_ms * interval '1 millisecond'"))
    return records


@contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """A new migrated database on the session's server with the dashboard roles, dropped afterwards."""
    from steelcore.postgres.roles import ensure_dashboard_roles

    with scratch_database(server_url, "steel_dash") as url:
        migrate.upgrade(url)
        ensure_dashboard_roles(url)
        yield url


def _shadow_answer(record: FrameRecord, copy: bool) -> dict[int, str]:
    return {d.class_id: d.rle for d in record.defects} if copy else {}


def seed_models(owner: Engine, records: list[FrameRecord], now: datetime) -> dict:
    """Versions 1 (production) and 2 (shadow at 50 %), shadow answers and operator verdicts.

    Shadowed: every recent L1 frame and a few two-day-old L2 ones (outside the page's 1 h window).
    The shadow copies production's masks on even-numbered defective frames and finds nothing on odd
    ones; it also marks class 3 on the first clean frame. Operators confirm the defects of even
    frames and call those of odd frames false (one after first confirming it, one verdict given on
    the alarm instead of the defect)."""
    recent = [r for r in records if r.line_id == "L1"]
    old = [r for r in records if r.line_id == "L2"][:4]
    defective = [r for r in recent if r.defects]
    copies = {r.frame_id: i % 2 == 0 for i, r in enumerate(defective)}
    clean = next(r for r in recent if not r.defects)
    shadow: dict[str, dict[int, str]] = {
        r.frame_id: _shadow_answer(r, copies.get(r.frame_id, False)) for r in recent + old
    }
    shadow[clean.frame_id] = {3: SHADOW_ONLY_RLE}
    for r in old:
        shadow[r.frame_id] = _shadow_answer(r, True)
    with owner.begin() as conn:
        conn.execute(
            insert(schema.model_versions),
            [
                {
                    "version": v,
                    "bundle": b,
                    "registered_at": now,
                    "registered_by": "lead",
                    "input_shape": "256x1600",
                }
                | {"class_ids": list(CLASS_IDS)}
                for v, b in ((1, "default"), (2, "synthetic"))
            ],
        )
        conn.execute(
            insert(schema.model_roles),
            [
                {"role": "production", "version": 1, "share": None, "since": now, "set_by": "lead"},
                {"role": "shadow", "version": 2, "share": 0.5, "since": now, "set_by": "ana"},
            ],
        )
        conn.execute(
            insert(schema.shadow_results),
            [
                {
                    "frame_id": r.frame_id,
                    "captured_at": r.captured_at,
                    "version": 2,
                    "judged_at": now,
                    "class_probs": [0.5] * 4,
                    "pixel_counts": [_pixels(shadow[r.frame_id].get(c, "")) for c in CLASS_IDS],
                    "rles": [shadow[r.frame_id].get(c, "") for c in CLASS_IDS],
                }
                for r in recent + old
            ],
        )
        ids = {
            (row.frame_id, row.class_id): (row.defect_id, row.alarm_id)
            for row in conn.execute(
                select(
                    schema.defects.c.frame_id,
                    schema.defects.c.class_id,
                    schema.defects.c.defect_id,
                    schema.alarms.c.alarm_id,
                ).select_from(
                    schema.defects.outerjoin(
                        schema.alarms,
                        (schema.alarms.c.frame_id == schema.defects.c.frame_id)
                        & (schema.alarms.c.class_id == schema.defects.c.class_id),
                    )
                )
            )
        }
        verdicts = []
        via_alarm = superseded = False
        for r in defective:
            for d in r.defects:
                defect_id, alarm_id = ids[(r.frame_id, d.class_id)]
                verdict = "confirmed" if copies[r.frame_id] else "false"
                row = {"defect_id": defect_id, "alarm_id": None, "verdict": verdict, "operator": "ana"}
                if not via_alarm and alarm_id is not None:
                    row |= {"defect_id": None, "alarm_id": alarm_id}
                    via_alarm = True
                if not superseded and verdict == "false":
                    earlier = row | {"verdict": "confirmed", "created_at": now - timedelta(minutes=5)}
                    verdicts.append(earlier)
                    superseded = True
                verdicts.append(row | {"created_at": now})
        assert via_alarm and superseded
        conn.execute(insert(schema.feedback), verdicts)
        figures = {"verdicts": {"production": {"pairs": 12, "f1": 0.5}, "shadow": {"pairs": 12, "f1": 0.8}}}
        audit = [
            ("register", 1, None, "lead", False, None, timedelta(hours=2)),
            ("shadow", 2, 1, "ana", False, None, timedelta(minutes=30)),
            ("promote", 3, 2, "bo", True, figures, timedelta(minutes=1)),
        ]
        conn.execute(
            insert(schema.model_audit),
            [
                {"action": a, "version": v, "previous_version": p, "actor": who, "forced": forced}
                | {"figures": f, "at": now - ago}
                for a, v, p, who, forced, f, ago in audit
            ],
        )
    return {"recent": recent, "defective": defective, "copies": copies, "shadow": shadow}


def _pixels(rle: str) -> int:
    numbers = [int(x) for x in rle.split()]
    return sum(numbers[1::2])
