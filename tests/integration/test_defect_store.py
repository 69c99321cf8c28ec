"""Migrations and the idempotent batch write, on the embedded Postgres (tests/conftest.py)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError

from steelcore.postgres import migrate, partitions, schema
from steelcore.postgres.alarm_outbox import mark_alarms_published, unpublished_alarms
from steelcore.postgres.defect_writes import SEVERITY_FULL_SCALE, DefectStore
from steelcore.postgres.engine import create_db_engine
from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord
from steelcore.postgres.roles import READER_ROLE, ensure_roles
from steelcore.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
ALARM_AREAS = Settings().alarm_min_area_px


def make_frame(i: int, *, n_defects: int = 2, alarm: bool = True, coil: str = "K1", probability: float = 0.9):
    classes = [1 + (i + k) % 4 for k in range(n_defects)]
    found = tuple(
        DefectRecord(c, f"{1 + 10 * c} {5 * c}", 5 * c + i, (c, 2 * c, c + 3, 2 * c + 4), probability)
        for c in classes
    )
    alarms = tuple(
        AlarmRecord(d.class_id, probability, d.area_px, T0 + timedelta(seconds=i)) for d in found[:1] if alarm
    )
    return FrameRecord(
        frame_id=f"frame-{i:05d}",
        line_id="L1",
        camera_id=f"C{i % 2}",
        coil_id=coil,
        position_m=0.25 * i,
        captured_at=T0 + timedelta(seconds=i),
        received_at=T0 + timedelta(seconds=i, milliseconds=20),
        model_name="default",
        model_version="3",
        defects=found,
        alarms=alarms,
        class_probs=(0.1, 0.2, 0.3, probability),
        decode_ms=2.5,
        infer_ms=61.0,
        image_ref=f"s3://frames/{i}.jpg",
    )


# What storing a frame writes (operator feedback and the model lifecycle's tables are not).
FRAME_TABLES = ("lines", "cameras", "coils", "frames", "defects", "alarms", "frame_images")


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in schema.TABLES
            if t.name in FRAME_TABLES
        }


# --- migrations ------------------------------------------------------------------------------------


def test_upgrade_builds_the_declared_schema_and_is_repeatable(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert migrate.current_revision(db_url) is None
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()
    migrate.upgrade(db_url)  # a second worker starting: nothing to do, no error

    eng = create_db_engine(db_url)
    try:
        with eng.connect() as conn:
            # The partitions of frames are made by the migration and `steel maintain`, not declared.
            partition_names = {p.name for p in partitions.partitions(conn)}
            assert "frames_default" in partition_names and len(partition_names) > 1

            def declared(name: str | None, type_: str, _parents: object) -> bool:
                return not (type_ == "table" and name in partition_names)

            def not_a_clone(obj: object, _name: object, type_: str, _reflected: bool, _to: object) -> bool:
                # Postgres keeps a copy of a foreign key to a partitioned table for each partition.
                referred = getattr(obj, "referred_table", None)
                return not (
                    type_ == "foreign_key_constraint" and getattr(referred, "name", None) in partition_names
                )

            opts = {"include_name": declared, "include_object": not_a_clone}
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True, **opts}
            )
            assert compare_metadata(context, schema.metadata) == []
            names = set(inspect(conn).get_table_names()) - partition_names
        assert names == {t.name for t in schema.TABLES} | {"alembic_version"}
    finally:
        eng.dispose()

    migrate.downgrade(db_url, "base")
    assert migrate.current_revision(db_url) is None
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()


def test_workers_starting_together_migrate_once(db_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def start_worker() -> None:
        barrier.wait()
        try:
            migrate.upgrade(db_url)
        except BaseException as exc:  # collected and reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=start_worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert migrate.current_revision(db_url) == migrate.head_revision()


# --- the batch write -------------------------------------------------------------------------------


def test_a_batch_stores_its_frames_defects_and_alarms(engine: Engine) -> None:
    batch = [make_frame(i, n_defects=i % 3) for i in range(10)]
    result = DefectStore(engine).write_batch(batch)

    expected_defects = sum(len(f.defects) for f in batch)
    expected_alarms = sum(len(f.alarms) for f in batch)
    assert result.new_frame_ids == tuple(sorted(f.frame_id for f in batch))
    assert result.duplicate_frame_ids == ()
    assert (result.defects_written, result.alarms_written) == (expected_defects, expected_alarms)
    assert counts(engine) == {
        "lines": 1,
        "cameras": 2,
        "coils": 1,
        "frames": 10,
        "defects": expected_defects,
        "alarms": expected_alarms,
        "frame_images": 0,  # these frames carry no image
    }

    sample = batch[5]
    with engine.connect() as conn:
        frame = conn.execute(select(schema.frames).where(schema.frames.c.frame_id == sample.frame_id)).one()
        stored = conn.execute(
            select(schema.defects).where(schema.defects.c.frame_id == sample.frame_id)
        ).all()
    assert frame.captured_at == sample.captured_at and frame.received_at == sample.received_at
    assert frame.coil_id == "K1" and frame.camera_id == "C1" and frame.position_m == pytest.approx(1.25)
    assert frame.class_probs == pytest.approx(list(sample.class_probs))
    assert (frame.model_name, frame.model_version, frame.image_ref) == ("default", "3", "s3://frames/5.jpg")
    assert frame.stored_at is not None
    by_class = {d.class_id: d for d in sample.defects}
    assert {row.class_id for row in stored} == set(by_class)
    for row in stored:
        want = by_class[row.class_id]
        assert (row.rle, row.area_px) == (want.rle, want.area_px)
        assert (row.bbox_x0, row.bbox_y0, row.bbox_x1, row.bbox_y1) == want.bbox
        assert row.captured_at == sample.captured_at and row.camera_id == sample.camera_id
        reference = ALARM_AREAS[row.class_id - 1]
        want_severity = want.probability * min(1.0, want.area_px / (SEVERITY_FULL_SCALE * reference))
        assert row.severity == pytest.approx(want_severity, rel=1e-6)


def test_writing_the_same_batch_again_adds_nothing(engine: Engine) -> None:
    store = DefectStore(engine)
    batch = [make_frame(i) for i in range(12)]
    store.write_batch(batch)
    before = counts(engine)

    again = store.write_batch(batch)

    assert again.new_frame_ids == ()
    assert sorted(again.duplicate_frame_ids) == sorted(f.frame_id for f in batch)
    assert (again.defects_written, again.alarms_written) == (0, 0)
    assert counts(engine) == before


def test_a_mixed_batch_adds_only_the_new_frames_and_the_first_result_wins(engine: Engine) -> None:
    store = DefectStore(engine)
    store.write_batch([make_frame(i) for i in range(6)])
    # Frames 3..5 come back re-inferred with other defects; 6..8 are new.
    redelivered = [make_frame(i, n_defects=1, probability=0.4) for i in range(3, 6)]
    new = [make_frame(i) for i in range(6, 9)]

    result = store.write_batch(redelivered + new)

    assert result.new_frame_ids == tuple(f.frame_id for f in new)
    assert sorted(result.duplicate_frame_ids) == [f.frame_id for f in redelivered]
    assert counts(engine)["frames"] == 9
    assert counts(engine)["defects"] == 9 * 2
    with engine.connect() as conn:
        probabilities = conn.execute(
            select(schema.defects.c.probability).where(schema.defects.c.frame_id == "frame-00004")
        ).scalars()
        assert list(probabilities) == pytest.approx([0.9, 0.9])


def test_a_frame_repeated_inside_one_batch_is_stored_once(engine: Engine) -> None:
    result = DefectStore(engine).write_batch([make_frame(1), make_frame(2), make_frame(1)])
    assert result.new_frame_ids == ("frame-00001", "frame-00002")
    assert result.duplicate_frame_ids == ("frame-00001",)
    assert counts(engine)["frames"] == 2 and counts(engine)["defects"] == 4


def test_a_failing_batch_stores_nothing(engine: Engine) -> None:
    store = DefectStore(engine)
    good = [make_frame(i) for i in range(3)]
    # class_id 40000 passes the record's checks but overflows the SMALLINT column.
    bad = replace(make_frame(3, alarm=False), defects=(DefectRecord(40000, "1 2", 2, (0, 0, 0, 1), 0.5),))
    with pytest.raises(DBAPIError):
        store.write_batch([*good, bad])
    assert counts(engine)["frames"] == 0 and counts(engine)["lines"] == 0
    assert store.write_batch(good).new_frame_ids == tuple(f.frame_id for f in good)


def test_an_empty_batch_touches_nothing(engine: Engine) -> None:
    assert DefectStore(engine).write_batch([]).new_frame_ids == ()
    assert counts(engine)["frames"] == 0


def test_concurrent_writers_of_overlapping_batches_store_each_frame_once(engine: Engine) -> None:
    # Worker A writes frames 0..119, worker B 60..179, both in batches of 12 and B in reverse
    # order, so they collide on the same frames (and on the line, cameras and coils) at once.
    frames_a = [make_frame(i, coil=f"K{i // 50}") for i in range(0, 120)]
    frames_b = [make_frame(i, coil=f"K{i // 50}") for i in range(179, 59, -1)]
    store = DefectStore(engine)
    barrier = threading.Barrier(2)
    new_ids: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def writer(name: str, frames: list[FrameRecord]) -> None:
        barrier.wait()
        try:
            for start in range(0, len(frames), 12):
                new_ids[name].extend(store.write_batch(frames[start : start + 12]).new_frame_ids)
        except BaseException as exc:  # collected and reported by the test thread
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=("a", frames_a)),
        threading.Thread(target=writer, args=("b", frames_b)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    everything = new_ids["a"] + new_ids["b"]
    assert len(everything) == len(set(everything)) == 180  # each frame new for exactly one writer
    assert counts(engine) == {
        "lines": 1,
        "cameras": 2,
        "coils": 4,
        "frames": 180,
        "defects": 360,
        "alarms": 180,
        "frame_images": 0,
    }


# --- alarms outbox, feedback, roles -----------------------------------------------------------------


def test_unpublished_alarms_are_listed_until_marked(engine: Engine) -> None:
    published_before = replace(
        make_frame(9), alarms=(AlarmRecord(2, 0.9, 19, T0, stream_entry_id="1-1", published_at=T0),)
    )
    DefectStore(engine).write_batch([make_frame(i) for i in range(3)] + [published_before])

    pending = unpublished_alarms(engine)
    assert [(a.frame_id, a.class_id) for a in pending] == [
        ("frame-00000", 1),
        ("frame-00001", 2),
        ("frame-00002", 3),
    ]
    assert pending[1].camera_id == "C1" and pending[1].coil_id == "K1"

    assert mark_alarms_published(engine, [("frame-00000", 1, "100-0"), ("frame-00001", 2, "100-1")]) == 2
    assert mark_alarms_published(engine, [("frame-00000", 1, "999-0")]) == 0  # first entry id kept
    assert [(a.frame_id, a.class_id) for a in unpublished_alarms(engine)] == [("frame-00002", 3)]
    with engine.connect() as conn:
        entry = conn.execute(
            select(schema.alarms.c.stream_entry_id).where(schema.alarms.c.frame_id == "frame-00000")
        ).scalar_one()
    assert entry == "100-0"


def test_feedback_targets_exactly_one_defect_or_alarm(engine: Engine) -> None:
    DefectStore(engine).write_batch([make_frame(0)])
    fb = schema.feedback
    with engine.begin() as conn:
        defect_id = conn.execute(select(schema.defects.c.defect_id).limit(1)).scalar_one()
        conn.execute(
            fb.insert().values(defect_id=defect_id, verdict="false", operator="ana", note="oil stain")
        )
    for values in ({"verdict": "confirmed"}, {"defect_id": defect_id, "verdict": "maybe"}):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(fb.insert().values(operator="ana", **values))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(fb)).scalar_one() == 1


def test_reader_role_can_select_but_not_write(engine: Engine, db_url: str) -> None:
    ensure_roles(db_url)
    ensure_roles(db_url)  # idempotent
    DefectStore(engine).write_batch([make_frame(0)])
    login = f"dash_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {login} LOGIN IN ROLE {READER_ROLE}"))
    reader = create_db_engine(make_url(db_url).set(username=login, password=None).render_as_string())
    try:
        with reader.connect() as conn:
            assert conn.execute(select(func.count()).select_from(schema.frames)).scalar_one() == 1
        with pytest.raises(ProgrammingError, match="permission denied"), reader.begin() as conn:
            conn.execute(schema.lines.insert().values(line_id="L9"))
    finally:
        reader.dispose()
        with engine.begin() as conn:
            conn.execute(text(f"DROP ROLE {login}"))
