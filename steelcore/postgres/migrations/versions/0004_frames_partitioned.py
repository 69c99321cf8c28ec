"""frames partitioned by RANGE (captured_at), one partition per UTC week, plus a DEFAULT partition.

Why weekly: retention (``steel maintain``, steelcore.postgres.partitions) drops whole partitions, so a week
is the granularity at which old frames go, which is fine against a retention of months. Daily
partitions would give 365 of them for a year: every lookup by frame_id alone (the dashboard's
overlays, joins from defects) probes each partition's index, and the planner's cost grows with
their number; weekly keeps about 53 for a year.

Why a DEFAULT partition: a frame whose captured_at falls outside every partition (a camera clock
set to 1970, a replay of old data, or a maintenance job that did not run ahead) is still stored,
never refused. ``steel maintain`` reports default rows, and cannot create a weekly partition over
rows sitting in the default (Postgres refuses): it creates partitions weeks ahead so new frames never
go there.

Keys: a partitioned table's primary key must include the partition key, so it becomes
(frame_id, captured_at). The worker's idempotent insert is ON CONFLICT on that key; a redelivered
frame carries the captured_at of its message, so it conflicts and lands once.

References to frames:
- ``defects`` keeps its foreign key, now on (frame_id, captured_at): defects already copy the
  frame's captured_at (written in the same batch), so existing rows satisfy it.
- ``frame_images`` loses its foreign key. It has no captured_at to reference with, its rows are
  written in their frame's transaction by the only writer, purged after days (not the months frames
  are kept), and ``steel maintain`` deletes the images of a partition before dropping it.

Existing rows are copied into the partitioned table inside the migration's transaction (weekly
partitions for the weeks that hold rows, within MIGRATION_WEEKS_BACK of now; older or hostile
timestamps go to the default). On a large table this holds writes for the copy: plan the upgrade.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here, not imported from steelcore.postgres.partitions, so later changes there never change
# what this revision did; maintain recognises partitions by their bounds, not their names.
WEEKS_AHEAD = 4
MIGRATION_WEEKS_BACK = 3 * 53  # weeks of existing rows that get partitions of their own
COLUMNS = (
    "frame_id, line_id, camera_id, coil_id, position_m, height, width, captured_at, received_at, "
    "stored_at, decode_ms, infer_ms, store_ms, model_name, model_version, class_probs, image_ref"
)


def _tstz(name: str, *, now_default: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.text("now()") if now_default else None,
    )


def _frames_table(name: str, *, partitioned: bool) -> None:
    if partitioned:
        key = sa.PrimaryKeyConstraint("frame_id", "captured_at", name="pk_frames")
    else:
        key = sa.PrimaryKeyConstraint("frame_id", name="pk_frames")
    op.create_table(
        name,
        sa.Column("frame_id", sa.Text(), nullable=False),
        sa.Column("line_id", sa.Text(), nullable=False),
        sa.Column("camera_id", sa.Text(), nullable=False),
        sa.Column("coil_id", sa.Text(), nullable=False),
        sa.Column("position_m", sa.REAL(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        _tstz("captured_at"),
        _tstz("received_at"),
        _tstz("stored_at", now_default=True),
        sa.Column("decode_ms", sa.REAL(), nullable=True),
        sa.Column("infer_ms", sa.REAL(), nullable=True),
        sa.Column("store_ms", sa.REAL(), nullable=True),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("class_probs", postgresql.ARRAY(sa.REAL()), nullable=True),
        sa.Column("image_ref", sa.Text(), nullable=True),
        key,
        sa.ForeignKeyConstraint(
            ["line_id", "camera_id"],
            ["cameras.line_id", "cameras.camera_id"],
            name="fk_frames_line_id_camera_id_cameras",
        ),
        sa.ForeignKeyConstraint(["coil_id"], ["coils.coil_id"], name="fk_frames_coil_id_coils"),
        sa.CheckConstraint("position_m >= 0", name="ck_frames_position_non_negative"),
        sa.CheckConstraint("height > 0 AND width > 0", name="ck_frames_size_positive"),
        postgresql_partition_by="RANGE (captured_at)" if partitioned else None,
    )


def _indexes(table: str) -> None:
    op.create_index("ix_frames_captured_at", table, ["captured_at"])
    op.create_index("ix_frames_coil_id_position_m", table, ["coil_id", "position_m"])
    op.create_index("ix_frames_line_id_camera_id_captured_at", table, ["line_id", "camera_id", "captured_at"])


def _drop_frames_keys_and_indexes(table: str) -> None:
    """Index names are schema-wide: free them on the table being replaced."""
    op.drop_index("ix_frames_captured_at", table_name=table)
    op.drop_index("ix_frames_coil_id_position_m", table_name=table)
    op.drop_index("ix_frames_line_id_camera_id_captured_at", table_name=table)
    op.drop_constraint("pk_frames", table, type_="primary")


def _copy_grants(source: str, target: str) -> None:
    """Grant on ``target`` what was granted on ``source`` (the table it replaces): workers keep their
    INSERT, readers their SELECT, without waiting for `migrate roles` to run again."""
    if op.get_context().as_sql:
        return  # offline DDL: the DBA runs `python -m steelcore.postgres.migrate roles` after it
    statements = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT format('GRANT %s ON %I TO %s', a.privilege_type, CAST(:target AS text), "
                "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END) "
                "FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(:source)"
            ),
            {"source": source, "target": target},
        )
        .scalars()
    )
    for statement in list(statements):
        op.execute(statement)


def _week_start(ts: datetime) -> datetime:
    day = ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def _create_week(start: datetime) -> None:
    end = start + timedelta(days=7)
    op.execute(
        f"CREATE TABLE frames_w{start:%Y%m%d} PARTITION OF frames "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


def upgrade() -> None:
    conn = op.get_bind()
    op.drop_constraint("fk_defects_frame_id_frames", "defects", type_="foreignkey")
    op.drop_constraint("fk_frame_images_frame_id_frames", "frame_images", type_="foreignkey")
    op.rename_table("frames", "frames_unpartitioned")
    _drop_frames_keys_and_indexes("frames_unpartitioned")

    _frames_table("frames", partitioned=True)
    _indexes("frames")
    _copy_grants("frames_unpartitioned", "frames")
    op.execute("CREATE TABLE frames_default PARTITION OF frames DEFAULT")
    now = _week_start(datetime.now(UTC))
    weeks = {now + timedelta(weeks=k) for k in range(WEEKS_AHEAD + 1)}
    if op.get_context().as_sql:  # `migrate sql` renders DDL only: no rows to look at
        for start in sorted(weeks):
            _create_week(start)
        op.execute(f"INSERT INTO frames ({COLUMNS}) SELECT {COLUMNS} FROM frames_unpartitioned")
        op.drop_table("frames_unpartitioned")
        _reference_from_defects()
        return
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT date_trunc('week', captured_at AT TIME ZONE 'UTC') FROM frames_unpartitioned "
            "WHERE captured_at >= :low AND captured_at < :high"
        ),
        {"low": now - timedelta(weeks=MIGRATION_WEEKS_BACK), "high": now + timedelta(weeks=WEEKS_AHEAD + 1)},
    )
    weeks |= {week.replace(tzinfo=UTC) for (week,) in rows}
    for start in sorted(weeks):
        _create_week(start)
    op.execute(f"INSERT INTO frames ({COLUMNS}) SELECT {COLUMNS} FROM frames_unpartitioned")
    op.drop_table("frames_unpartitioned")
    _reference_from_defects()


def _reference_from_defects() -> None:
    op.create_foreign_key(
        "fk_defects_frame_id_captured_at_frames",
        "defects",
        "frames",
        ["frame_id", "captured_at"],
        ["frame_id", "captured_at"],
        ondelete="CASCADE",
    )


def downgrade() -> None:
    op.drop_constraint("fk_defects_frame_id_captured_at_frames", "defects", type_="foreignkey")
    op.rename_table("frames", "frames_partitioned")
    _drop_frames_keys_and_indexes("frames_partitioned")
    _frames_table("frames", partitioned=False)
    _indexes("frames")
    _copy_grants("frames_partitioned", "frames")
    # The old key is frame_id alone: a frame stored twice under two capture times keeps the first.
    op.execute(
        f"INSERT INTO frames ({COLUMNS}) SELECT {COLUMNS} FROM frames_partitioned "
        "ORDER BY stored_at ON CONFLICT (frame_id) DO NOTHING"
    )
    op.drop_table("frames_partitioned")  # its partitions go with it
    # Rows the old foreign keys would refuse: defects of a frame kept under another capture time
    # point at the same frame_id (fine), images of frames dropped by retention (deleted here).
    op.execute(
        "DELETE FROM frame_images i WHERE NOT EXISTS (SELECT FROM frames f WHERE f.frame_id = i.frame_id)"
    )
    op.create_foreign_key(
        "fk_defects_frame_id_frames", "defects", "frames", ["frame_id"], ["frame_id"], ondelete="CASCADE"
    )
    op.create_foreign_key(
        "fk_frame_images_frame_id_frames",
        "frame_images",
        "frames",
        ["frame_id"],
        ["frame_id"],
        ondelete="CASCADE",
    )
