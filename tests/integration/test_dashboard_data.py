"""The dashboard's data layer on the embedded Postgres: live queries, roles, feedback, the
retraining export and the frame images kept by the store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from dashboard_seed import OLD_COIL, RECENT_COIL, new_database, seed
from pydantic import SecretStr
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from dashboard.config import DashboardSettings
from dashboard.prepare_database import prepare_embedded_database
from steelcore import exit_codes
from steelcore.kaggle_csv import read_labels
from steelcore.postgres import frame_reads, live_reads, migrate, schema
from steelcore.postgres.defect_writes import DefectStore
from steelcore.postgres.engine import (
    DASHBOARD_ROLE,
    FEEDBACK_ROLE,
    create_db_engine,
    open_feedback_writer,
    open_reader,
    reader_url,
    role_url,
)
from steelcore.postgres.frame_images import load_frame_image, purge_frame_images
from steelcore.postgres.frame_images import main as frame_images_main
from steelcore.postgres.roles import ensure_dashboard_roles
from steelcore.postgres.verdicts import FeedbackError, defect_verdicts, record_feedback
from steelcore.retraining_export import export_retraining_dataset, image_name, retraining_zip_file
from steelcore.rle import decode
from steelcore.severstal import CLASS_IDS

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def records(dashboard_owner: Engine):
    return seed(dashboard_owner, NOW)


@pytest.fixture(scope="module")
def reader(dashboard_db_url: str, records) -> Iterator[Engine]:
    engine = open_reader(role_url(dashboard_db_url, DASHBOARD_ROLE))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def writer(dashboard_db_url: str, records) -> Iterator[Engine]:
    engine = open_feedback_writer(role_url(dashboard_db_url, FEEDBACK_ROLE))
    yield engine
    engine.dispose()


def _defect_ids(owner: Engine, frame_id: str) -> dict[int, int]:
    with owner.connect() as conn:
        rows = conn.execute(
            select(schema.defects.c.class_id, schema.defects.c.defect_id).where(
                schema.defects.c.frame_id == frame_id
            )
        )
        return {int(r.class_id): int(r.defect_id) for r in rows}


# --- live queries ------------------------------------------------------------------------------------


def test_camera_rates_count_frames_and_defects_per_class(reader: Engine, records) -> None:
    since = NOW - timedelta(seconds=45)
    rates = {
        (r.line_id, r.camera_id, r.class_id): r for r in live_reads.camera_rates(reader, since, until=NOW)
    }
    recent = [r for r in records if since <= r.captured_at < NOW]
    for camera in ("C1", "C2"):
        mine = [r for r in recent if r.camera_id == camera]
        for class_id in CLASS_IDS:
            rate = rates[("L1", camera, class_id)]
            assert rate.frames == len(mine)
            assert rate.defects == sum(any(d.class_id == class_id for d in r.defects) for r in mine)
    assert not any(k[0] == "L2" for k in rates)  # the old line is outside the window


def test_frames_per_second_of_a_line_younger_than_the_window(reader: Engine, records) -> None:
    """Line L1 started 60 s ago at 2 cameras x 0.5 frames/s: 1 frame/s, whatever the window (the
    live page showed 1.8 frames/s of 9.8 by dividing by the whole 300 s)."""
    stats = live_reads.throughput(reader, NOW - timedelta(seconds=300), NOW, line_id="L1")
    first = min(r.captured_at for r in records if r.line_id == "L1")
    assert stats.covered_s == pytest.approx((NOW - first).total_seconds())
    assert stats.frames_per_s == pytest.approx(1.0)
    # All lines: L2 has frames from two days ago, so the whole window counts.
    everything = live_reads.throughput(reader, NOW - timedelta(seconds=300), NOW)
    assert everything.covered_s == pytest.approx(300.0)


def test_throughput_reports_the_window_and_the_newest_frame(reader: Engine, records) -> None:
    since = NOW - timedelta(seconds=30)
    stats = live_reads.throughput(reader, since, NOW, line_id="L1")
    in_window = [r for r in records if r.line_id == "L1" and since <= r.captured_at < NOW]
    assert stats.frames == len(in_window)
    assert stats.frames_per_s == pytest.approx(len(in_window) / 30.0)
    assert stats.newest_captured_at == max(r.captured_at for r in records if r.line_id == "L1")
    infer = sorted(r.infer_ms for r in in_window)
    assert stats.latency_ms["infer"][0] == pytest.approx(float(np.percentile(infer, 50)))
    assert stats.latency_ms["capture to stored"][0] > 0
    with pytest.raises(ValueError, match="not after"):
        live_reads.throughput(reader, NOW, since)


def test_alarm_feed_is_newest_first_and_carries_the_defect(reader: Engine, records) -> None:
    feed = live_reads.recent_alarms(reader, 5)
    # One batch stores alarms in (frame, class) order, so ids break ties of raised_at that way.
    expected = sorted(
        ((a.raised_at, r.frame_id, a.class_id) for r in records for a in r.alarms), reverse=True
    )
    assert [(a.raised_at, a.frame_id, a.class_id) for a in feed] == expected[:5]
    assert all(a.line_id == "L1" for a in feed)


def test_latest_defective_frames_hold_their_masks(reader: Engine, records) -> None:
    latest = frame_reads.recent_defective_frames(reader, NOW - timedelta(minutes=5), 2)
    defective = sorted((r for r in records if r.defects), key=lambda r: r.captured_at, reverse=True)
    assert [d.frame_id for d in latest] == [r.frame_id for r in defective[:2]]
    stored = {d.class_id: d.rle for d in latest[0].defects}
    assert stored == {d.class_id: d.rle for d in defective[0].defects}


def test_current_coil_and_its_strip_marks(reader: Engine, records) -> None:
    assert live_reads.current_coil(reader) == RECENT_COIL
    assert live_reads.current_coil(reader, line_id="L2") == OLD_COIL
    marks = frame_reads.coil_marks(reader, RECENT_COIL)
    expected = sorted(
        (r.position_m, (d.bbox[0] + d.bbox[2]) / 2)
        for r in records
        if r.coil_id == RECENT_COIL
        for d in r.defects
    )
    assert sorted((m.position_m, m.across_px) for m in marks) == expected  # exact in float32


# --- roles and the narrow write path ---------------------------------------------------------------


def test_the_dashboard_login_cannot_write_anything(reader: Engine, dashboard_owner: Engine) -> None:
    defect_id = next(iter(_defect_ids(dashboard_owner, "L1-C1-seed-00000").values()))
    with pytest.raises(DBAPIError, match=r"read-only transaction|permission denied"):
        record_feedback(reader, verdict="confirmed", operator="ana", defect_id=defect_id)


def test_the_feedback_login_may_only_insert_feedback(writer: Engine, dashboard_owner: Engine) -> None:
    defect_id = next(iter(_defect_ids(dashboard_owner, "L1-C1-seed-00003").values()))
    record_feedback(writer, verdict="false", operator=" ana ", defect_id=defect_id, note="oil")
    with dashboard_owner.connect() as conn:
        row = conn.execute(select(schema.feedback).where(schema.feedback.c.defect_id == defect_id)).one()
    assert (row.verdict, row.operator, row.note) == ("false", "ana", "oil")
    for statement in ("SELECT count(*) FROM feedback", "SELECT count(*) FROM defects"):
        with pytest.raises(ProgrammingError, match="permission denied"), writer.connect() as conn:
            conn.execute(text(statement))
    with pytest.raises(ProgrammingError, match="permission denied"), writer.begin() as conn:
        conn.execute(schema.lines.insert().values(line_id="L9"))


def test_feedback_on_something_missing_or_malformed_is_refused(writer: Engine) -> None:
    with pytest.raises(FeedbackError, match="defect 999999999 does not exist"):
        record_feedback(writer, verdict="confirmed", operator="ana", defect_id=999_999_999)
    with pytest.raises(FeedbackError, match="verdict"):
        record_feedback(writer, verdict="maybe", operator="ana", defect_id=1)
    with pytest.raises(FeedbackError, match="exactly one"):
        record_feedback(writer, verdict="false", operator="ana", defect_id=1, alarm_id=1)
    with pytest.raises(FeedbackError, match="operator"):
        record_feedback(writer, verdict="false", operator="  ", defect_id=1)


def test_the_latest_verdict_wins_whether_on_the_alarm_or_the_defect(
    writer: Engine, reader: Engine, dashboard_owner: Engine, records
) -> None:
    frame = next(r for r in records if r.alarms and r.frame_id.startswith("L1-C2"))
    class_id = frame.alarms[0].class_id
    defect_id = _defect_ids(dashboard_owner, frame.frame_id)[class_id]
    with dashboard_owner.connect() as conn:
        alarm_id = conn.execute(
            select(schema.alarms.c.alarm_id).where(
                schema.alarms.c.frame_id == frame.frame_id, schema.alarms.c.class_id == class_id
            )
        ).scalar_one()
    record_feedback(writer, verdict="false", operator="ana", alarm_id=alarm_id)
    assert defect_verdicts(reader, [defect_id])[defect_id].verdict == "false"
    assert defect_verdicts(reader, [defect_id])[defect_id].via == "alarm"
    record_feedback(writer, verdict="confirmed", operator="bo", defect_id=defect_id)
    latest = defect_verdicts(reader, [defect_id])[defect_id]
    assert (latest.verdict, latest.operator, latest.via) == ("confirmed", "bo", "defect")


# --- retraining export --------------------------------------------------------------------------------


def test_the_retraining_export_holds_exactly_the_fully_reviewed_frames(
    dashboard_db_url: str, postgres_url: str, tmp_path: Path
) -> None:
    # A database of its own: the verdicts here must not mix with the other tests'.
    with new_database(postgres_url) as url:
        owner = create_db_engine(url)
        writer = open_feedback_writer(role_url(url, FEEDBACK_ROLE))
        reader = open_reader(role_url(url, DASHBOARD_ROLE))
        try:
            records = seed(owner, NOW)
            defective = [r for r in records if r.defects]
            pngs = [r for r in defective if r.image.startswith(b"\x89PNG")]  # two classes each
            jpegs = [r for r in defective if r.image.startswith(b"\xff\xd8")]
            confirmed, partial, negative, purged = pngs[0], pngs[1], jpegs[0], jpegs[1]
            assert len(partial.defects) > 1, "the partial case needs a frame with two defects"
            for frame, verdict in ((confirmed, "confirmed"), (negative, "false")):
                for defect_id in _defect_ids(owner, frame.frame_id).values():
                    record_feedback(writer, verdict=verdict, operator="ana", defect_id=defect_id)
            first_class = min(_defect_ids(owner, partial.frame_id))
            record_feedback(
                writer,
                verdict="confirmed",
                operator="ana",
                defect_id=_defect_ids(owner, partial.frame_id)[first_class],
            )
            for defect_id in _defect_ids(owner, purged.frame_id).values():
                record_feedback(writer, verdict="confirmed", operator="ana", defect_id=defect_id)
            with owner.begin() as conn:
                conn.execute(
                    schema.frame_images.delete().where(schema.frame_images.c.frame_id == purged.frame_id)
                )

            summary = export_retraining_dataset(reader, tmp_path / "reviewed")
            archive_file, zipped = retraining_zip_file(reader)
            with archive_file:
                archive = archive_file.read()
        finally:
            for engine in (owner, writer, reader):
                engine.dispose()

    assert (summary.images, summary.negatives, summary.skipped_unreviewed, summary.skipped_no_image) == (
        2,
        1,
        1,
        1,
    )
    assert summary.defect_rows == len(confirmed.defects)
    assert zipped == summary and archive[:2] == b"PK"
    out = tmp_path / "reviewed"
    names = sorted(p.name for p in (out / "train_images").iterdir())
    assert names == sorted([image_name(confirmed.frame_id), image_name(negative.frame_id)])
    # A JPEG is copied as received; a frame that arrived as PNG is encoded to JPEG once.
    assert (out / "train_images" / image_name(negative.frame_id)).read_bytes() == negative.image
    written = cv2.imread(str(out / "train_images" / image_name(confirmed.frame_id)), cv2.IMREAD_GRAYSCALE)
    original = cv2.imdecode(np.frombuffer(confirmed.image, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert np.abs(written.astype(int) - original.astype(int)).mean() < 2.0
    labels = read_labels(out / "train.csv")
    assert set(labels) == {image_name(confirmed.frame_id)}  # the negative has no row: defect-free
    for d in confirmed.defects:
        assert np.array_equal(decode(labels[image_name(confirmed.frame_id)][d.class_id - 1]), decode(d.rle))

    from training.datasets import open_dataset

    dataset = open_dataset(out)
    assert len(dataset) == 2
    with pytest.raises(ValueError, match="not an empty folder"):
        export_retraining_dataset(reader, out)


def test_image_names_are_safe_file_names() -> None:
    assert image_name("L1-C1-17000-00000001") == "L1-C1-17000-00000001.jpg"
    odd = image_name("../etc/passwd")
    assert "/" not in odd and not odd.startswith(".") and odd.endswith(".jpg")
    assert image_name("a b") != image_name("a_b")


# --- frame images ------------------------------------------------------------------------------------


def test_images_are_kept_for_defective_frames_only_and_as_received(dashboard_owner: Engine, records) -> None:
    with dashboard_owner.connect() as conn:
        kept = dict(conn.execute(select(schema.frame_images.c.frame_id, schema.frame_images.c.image)).all())
    assert set(kept) == {r.frame_id for r in records if r.defects}
    for r in records:
        if r.defects:
            assert bytes(kept[r.frame_id]) == r.image
    stored = load_frame_image(dashboard_owner, next(r.frame_id for r in records if r.defects))
    assert stored is not None and stored.pixels().shape == (256, 1600)
    assert load_frame_image(dashboard_owner, next(r.frame_id for r in records if not r.defects)) is None


def test_a_redelivered_frame_keeps_one_image_and_bad_bytes_are_refused(
    dashboard_owner: Engine, records
) -> None:
    result = DefectStore(dashboard_owner).write_batch([r for r in records if r.defects][:3])
    assert result.images_written == 0 and result.new_frame_ids == ()
    with pytest.raises(ValueError, match="neither JPEG, PNG nor raw"):
        replace(records[0], image=b"not an image")


def test_raw_pixels_are_kept_and_purge_removes_only_old_images(postgres_url: str) -> None:
    with new_database(postgres_url) as url:
        engine = create_db_engine(url)
        try:
            base = next(r for r in seed(engine, NOW) if r.defects)
            raw = np.arange(256 * 1600, dtype=np.uint32).astype(np.uint8).reshape(256, 1600)
            fresh = replace(base, frame_id="raw-frame", image=raw.tobytes())
            assert DefectStore(engine).write_batch([fresh]).images_written == 1
            stored = load_frame_image(engine, "raw-frame")
            assert stored is not None and stored.encoding == "raw"
            assert np.array_equal(stored.pixels(), raw)
            with engine.begin() as conn:  # every image but the raw one was stored three weeks ago
                conn.execute(
                    text(
                        "UPDATE frame_images SET stored_at = stored_at - interval '21 days' "
                        "WHERE frame_id <> :f"
                    ),
                    {"f": "raw-frame"},
                )
                total = conn.execute(select(func.count()).select_from(schema.frame_images)).scalar_one()
            assert purge_frame_images(engine, older_than=timedelta(days=20)) == total - 1
            with engine.connect() as conn:
                left = conn.execute(select(schema.frame_images.c.frame_id)).scalars().all()
                defects_left = conn.execute(select(func.count()).select_from(schema.defects)).scalar_one()
            assert left == ["raw-frame"]
            assert defects_left > 0  # only the images go
            assert frame_images_main(["purge", url, "--days", "0"]) == exit_codes.OK
            assert load_frame_image(engine, "raw-frame") is None
        finally:
            engine.dispose()


def test_the_image_migration_goes_down_and_up(postgres_url: str) -> None:
    with new_database(postgres_url) as url:
        migrate.downgrade(url, "0001")
        engine = create_db_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT to_regclass('frame_images')")).scalar_one() is None
            migrate.upgrade(url)
            with engine.connect() as conn:
                storage = conn.execute(
                    text(
                        "SELECT attstorage FROM pg_attribute WHERE attrelid = 'frame_images'::regclass "
                        "AND attname = 'image'"
                    )
                ).scalar_one()
            assert storage == "e"  # EXTERNAL: JPEG bytes are not compressed again
        finally:
            engine.dispose()


# --- role set-up -----------------------------------------------------------------------------------------


def test_role_passwords_are_set_only_when_given(dashboard_db_url: str, dashboard_owner: Engine) -> None:
    query = text(
        "SELECT rolname, rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
        "WHERE rolname IN (:a, :b) ORDER BY 1"
    )
    try:
        ensure_dashboard_roles(dashboard_db_url, dashboard_password=SecretStr("pw-for-the-dashboard"))
        ensure_dashboard_roles(dashboard_db_url)  # again, and without a password: the one set stays
        with dashboard_owner.connect() as conn:
            rows = dict(conn.execute(query, {"a": DASHBOARD_ROLE, "b": FEEDBACK_ROLE}).all())
        assert rows == {DASHBOARD_ROLE: True, FEEDBACK_ROLE: None}
    finally:
        with dashboard_owner.begin() as conn:
            conn.execute(text(f"ALTER ROLE {DASHBOARD_ROLE} PASSWORD NULL"))


def test_the_launcher_prepares_the_embedded_database(postgres_url: str, stack_run_dir: Path) -> None:
    settings = DashboardSettings(run_dir=stack_run_dir, postgres_url=None)
    prepare_embedded_database(settings)
    assert migrate.current_revision(postgres_url) == migrate.head_revision()
    engine = open_reader(reader_url(settings))
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(schema.frame_images)).scalar_one() >= 0
            assert conn.execute(text("SELECT current_user")).scalar_one() == DASHBOARD_ROLE
    finally:
        engine.dispose()
