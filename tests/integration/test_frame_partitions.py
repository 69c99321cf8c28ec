"""frames partitioned by week (revision 0004) and `steel maintain`, on the embedded Postgres."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from steelcore import exit_codes
from steelcore.postgres import migrate, partitions
from steelcore.postgres.defect_writes import DefectStore
from steelcore.postgres.engine import create_db_engine
from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord
from steelcore.postgres.roles import WORKER_ROLE, ensure_roles
from steelcore.settings import Settings
from workers.maintain import maintain_once

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def frame(frame_id: str, captured_at: datetime, *, defect: bool = True) -> FrameRecord:
    defects = (DefectRecord(3, "101 5", 5, (0, 100, 0, 104), 0.9),) if defect else ()
    return FrameRecord(
        frame_id=frame_id, line_id="L1", camera_id="top", coil_id="K1", position_m=1.0,
        captured_at=captured_at, received_at=captured_at, model_name="m", model_version="1",
        defects=defects, alarms=(AlarmRecord(3, 0.9, 5, captured_at),) if defect else (),
        image=b"\xff\xd8\xff-jpeg" if defect else None, image_encoding="jpeg" if defect else None,
    )  # fmt: skip


def partition_of(engine: Engine, frame_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT tableoid::regclass::text FROM frames WHERE frame_id = :f"), {"f": frame_id}
        )
        return [r[0] for r in rows]


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_frames_land_in_their_week_and_a_hostile_timestamp_in_the_default(engine: Engine) -> None:
    store = DefectStore(engine)
    this_week = partitions.week_start(NOW)
    result = store.write_batch(
        [
            frame("now", NOW),
            frame("future", datetime(2999, 1, 1, tzinfo=UTC)),
            frame("epoch", datetime(1970, 1, 1, tzinfo=UTC)),
        ]
    )
    assert sorted(result.new_frame_ids) == ["epoch", "future", "now"]
    assert partition_of(engine, "now") == [partitions.partition_name(this_week)]
    assert partition_of(engine, "future") == ["frames_default"]
    assert partition_of(engine, "epoch") == ["frames_default"]


def test_a_redelivered_frame_is_stored_once(engine: Engine) -> None:
    store = DefectStore(engine)
    first = store.write_batch([frame("f1", NOW)])
    again = store.write_batch([frame("f1", NOW), frame("f2", NOW)])
    assert first.new_frame_ids == ("f1",) and again.new_frame_ids == ("f2",)
    assert again.duplicate_frame_ids == ("f1",)
    assert count(engine, "frames") == 2 and count(engine, "defects") == 2


def test_maintain_drops_old_weeks_with_their_rows_and_keeps_newer_ones(engine: Engine, db_url: str) -> None:
    old, recent = NOW - timedelta(days=60), NOW - timedelta(days=3)
    settings = Settings(postgres_url=db_url, frame_retention_days=30, frame_image_retention_days=14)
    # A partition for the old week, as an earlier maintenance run would have made it.
    assert not partitions.create_ahead(engine, old, weeks_ahead=0).problems
    DefectStore(engine).write_batch(
        [frame("old", old), frame("recent", recent), frame("old-clean", old, defect=False)]
    )
    old_partition = partitions.partition_name(partitions.week_start(old))
    assert partition_of(engine, "old") == [old_partition]

    assert maintain_once(settings, weeks_ahead=2, now=NOW) == exit_codes.OK
    with engine.connect() as conn:
        names = {p.name for p in partitions.partitions(conn)}
        ids = set(conn.execute(text("SELECT frame_id FROM frames")).scalars())
        defect_frames = set(conn.execute(text("SELECT frame_id FROM defects")).scalars())
        alarm_frames = set(conn.execute(text("SELECT frame_id FROM alarms")).scalars())
        image_frames = set(conn.execute(text("SELECT frame_id FROM frame_images")).scalars())
    assert old_partition not in names
    assert ids == {"recent"} and defect_frames == alarm_frames == {"recent"}
    assert image_frames == {"recent"}  # 3 days old: within the image retention
    # This week and the two after it exist.
    for k in range(3):
        assert partitions.partition_name(partitions.week_start(NOW) + k * partitions.WEEK) in names
    assert maintain_once(settings, weeks_ahead=2, now=NOW) == exit_codes.OK  # a second run: nothing to do


def test_retention_zero_keeps_everything(engine: Engine, db_url: str) -> None:
    old = NOW - timedelta(days=900)
    partitions.create_ahead(engine, old, weeks_ahead=0)
    DefectStore(engine).write_batch([frame("ancient", old, defect=False)])
    settings = Settings(postgres_url=db_url, frame_retention_days=0)
    assert maintain_once(settings, weeks_ahead=0, now=NOW) == exit_codes.OK
    assert partition_of(engine, "ancient") != []


def test_a_week_already_in_the_default_partition_is_reported_not_lost(engine: Engine, db_url: str) -> None:
    far = partitions.week_start(NOW) + 10 * partitions.WEEK
    DefectStore(engine).write_batch([frame("early", far + timedelta(hours=1), defect=False)])
    settings = Settings(postgres_url=db_url, frame_retention_days=0)
    assert maintain_once(settings, weeks_ahead=12, now=NOW) == exit_codes.FAILURE
    assert partition_of(engine, "early") == ["frames_default"]
    with engine.connect() as conn:
        names = {p.name for p in partitions.partitions(conn)}
    assert partitions.partition_name(far) not in names
    assert partitions.partition_name(far + partitions.WEEK) in names  # the others were made


def test_the_worker_login_inserts_into_partitions_made_after_its_grants(engine: Engine, db_url: str) -> None:
    from steelcore.postgres.engine import role_url

    ensure_roles(db_url)
    later = partitions.week_start(NOW) + 8 * partitions.WEEK
    assert partitions.create_ahead(engine, later, weeks_ahead=0).created  # after the grants
    worker = create_db_engine(role_url(db_url, WORKER_ROLE))
    try:
        assert DefectStore(worker).write_batch([frame("w1", later + timedelta(hours=2))]).new_frame_ids == (
            "w1",
        )
    finally:
        worker.dispose()
    assert partition_of(engine, "w1") == [partitions.partition_name(later)]


def test_the_worker_login_keeps_its_grants_through_the_upgrade(db_url: str) -> None:
    """The migration replaces the frames table: its grants come along, so workers insert at once
    (no need to wait for `migrate roles`)."""
    from steelcore.postgres.engine import role_url

    migrate.upgrade(db_url, "0003")
    ensure_roles(db_url)
    migrate.upgrade(db_url)
    worker = create_db_engine(role_url(db_url, WORKER_ROLE))
    try:
        assert DefectStore(worker).write_batch([frame("g1", NOW)]).new_frame_ids == ("g1",)
    finally:
        worker.dispose()
    migrate.downgrade(db_url, "0003")
    worker = create_db_engine(role_url(db_url, WORKER_ROLE))
    try:
        with worker.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM frames")).scalar_one() == 1
    finally:
        worker.dispose()


def test_existing_rows_survive_the_upgrade_and_the_downgrade(db_url: str) -> None:
    migrate.upgrade(db_url, "0003")
    eng = create_db_engine(db_url)
    try:
        rows = [
            frame("a", NOW - timedelta(days=20)),
            frame("b", NOW),
            frame("c", datetime(1999, 5, 5, tzinfo=UTC)),
        ]
        with eng.begin() as conn:  # the 0003 schema: the key is frame_id alone
            for table, values in (
                ("lines", "('L1')"),
                ("cameras", "('L1', 'top')"),
                ("coils", "('K1', 'L1')"),
            ):
                conn.execute(text(f"INSERT INTO {table} VALUES {values}"))
            for r in rows:
                conn.execute(
                    text(
                        "INSERT INTO frames (frame_id, line_id, camera_id, coil_id, position_m, height, "
                        "width, captured_at, received_at, model_name, model_version) "
                        "VALUES (:f, 'L1', 'top', 'K1', 1, 256, 1600, :t, :t, 'm', '1')"
                    ),
                    {"f": r.frame_id, "t": r.captured_at},
                )
                conn.execute(
                    text(
                        "INSERT INTO defects (frame_id, class_id, captured_at, line_id, camera_id, coil_id, "
                        "rle, area_px, bbox_x0, bbox_y0, bbox_x1, bbox_y1, probability, severity) "
                        "VALUES (:f, 3, :t, 'L1', 'top', 'K1', '1 5', 5, 0, 0, 1, 1, 0.9, 0.5)"
                    ),
                    {"f": r.frame_id, "t": r.captured_at},
                )
                conn.execute(
                    text("INSERT INTO frame_images (frame_id, encoding, image) VALUES (:f, 'jpeg', 'x')"),
                    {"f": r.frame_id},
                )
        migrate.upgrade(db_url)
        assert partition_of(eng, "a") == [
            partitions.partition_name(partitions.week_start(NOW - timedelta(days=20)))
        ]
        assert partition_of(eng, "c") == ["frames_default"]  # older than the weeks the migration partitions
        assert count(eng, "frames") == 3 and count(eng, "defects") == 3 and count(eng, "frame_images") == 3
        # The defects' foreign key now includes captured_at: a defect of an unknown (frame, time) is refused.
        with pytest.raises(Exception, match="foreign key"), eng.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO defects (frame_id, class_id, captured_at, line_id, camera_id, coil_id, rle, "
                    "area_px, bbox_x0, bbox_y0, bbox_x1, bbox_y1, probability, severity) "
                    "VALUES ('b', 1, :t, 'L1', 'top', 'K1', '1 5', 5, 0, 0, 1, 1, 0.9, 0.5)"
                ),
                {"t": NOW - timedelta(days=1)},
            )
        migrate.downgrade(db_url, "0003")
        with eng.connect() as conn:
            kind = conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'frames'")).scalar_one()
        assert kind == "r"
        assert count(eng, "frames") == 3 and count(eng, "defects") == 3 and count(eng, "frame_images") == 3
        migrate.upgrade(db_url)
        assert count(eng, "frames") == 3
    finally:
        eng.dispose()


def test_maintain_cli_refuses_bad_arguments_and_reports_an_unmigrated_database(db_url: str) -> None:
    from workers import maintain

    parser = argparse.ArgumentParser()
    maintain.add_arguments(parser)
    assert maintain.run(parser.parse_args(["--every", "0"])) == exit_codes.USAGE
    settings = Settings(postgres_url=db_url)
    assert maintain_once(settings, weeks_ahead=1) == exit_codes.UNAVAILABLE  # not migrated yet


def test_steel_maintain_is_a_command_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    from steelcore import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["maintain", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--every SECONDS" in out and "--weeks-ahead" in out
