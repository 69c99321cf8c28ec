"""Initial schema: lines, cameras, coils, frames, defects, alarms, feedback.

Written out in full (not generated from steelcore.postgres.schema at run time) so that later changes to
the models never change what this revision did. tests/integration/test_defect_store.py checks that
head matches the models.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tstz(name: str, *, nullable: bool = False, now_default: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.text("now()") if now_default else None,
    )


def upgrade() -> None:
    op.create_table(
        "lines",
        sa.Column("line_id", sa.Text(), nullable=False),
        _tstz("first_seen_at", now_default=True),
        sa.PrimaryKeyConstraint("line_id", name="pk_lines"),
    )
    op.create_table(
        "cameras",
        sa.Column("line_id", sa.Text(), nullable=False),
        sa.Column("camera_id", sa.Text(), nullable=False),
        _tstz("first_seen_at", now_default=True),
        sa.PrimaryKeyConstraint("line_id", "camera_id", name="pk_cameras"),
        sa.ForeignKeyConstraint(["line_id"], ["lines.line_id"], name="fk_cameras_line_id_lines"),
    )
    op.create_table(
        "coils",
        sa.Column("coil_id", sa.Text(), nullable=False),
        sa.Column("line_id", sa.Text(), nullable=False),
        _tstz("first_seen_at", now_default=True),
        sa.PrimaryKeyConstraint("coil_id", name="pk_coils"),
        sa.ForeignKeyConstraint(["line_id"], ["lines.line_id"], name="fk_coils_line_id_lines"),
    )
    op.create_table(
        "frames",
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
        sa.PrimaryKeyConstraint("frame_id", name="pk_frames"),
        sa.ForeignKeyConstraint(
            ["line_id", "camera_id"],
            ["cameras.line_id", "cameras.camera_id"],
            name="fk_frames_line_id_camera_id_cameras",
        ),
        sa.ForeignKeyConstraint(["coil_id"], ["coils.coil_id"], name="fk_frames_coil_id_coils"),
        sa.CheckConstraint("position_m >= 0", name="ck_frames_position_non_negative"),
        sa.CheckConstraint("height > 0 AND width > 0", name="ck_frames_size_positive"),
    )
    op.create_index("ix_frames_captured_at", "frames", ["captured_at"])
    op.create_index("ix_frames_coil_id_position_m", "frames", ["coil_id", "position_m"])
    op.create_index(
        "ix_frames_line_id_camera_id_captured_at", "frames", ["line_id", "camera_id", "captured_at"]
    )

    op.create_table(
        "defects",
        sa.Column("defect_id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("frame_id", sa.Text(), nullable=False),
        sa.Column("class_id", sa.SmallInteger(), nullable=False),
        _tstz("captured_at"),
        sa.Column("line_id", sa.Text(), nullable=False),
        sa.Column("camera_id", sa.Text(), nullable=False),
        sa.Column("coil_id", sa.Text(), nullable=False),
        sa.Column("rle", sa.Text(), nullable=False),
        sa.Column("area_px", sa.Integer(), nullable=False),
        sa.Column("bbox_x0", sa.Integer(), nullable=False),
        sa.Column("bbox_y0", sa.Integer(), nullable=False),
        sa.Column("bbox_x1", sa.Integer(), nullable=False),
        sa.Column("bbox_y1", sa.Integer(), nullable=False),
        sa.Column("probability", sa.REAL(), nullable=False),
        sa.Column("severity", sa.REAL(), nullable=False),
        sa.PrimaryKeyConstraint("defect_id", name="pk_defects"),
        sa.UniqueConstraint("frame_id", "class_id", name="uq_defects_frame_id_class_id"),
        sa.ForeignKeyConstraint(
            ["frame_id"], ["frames.frame_id"], name="fk_defects_frame_id_frames", ondelete="CASCADE"
        ),
        sa.CheckConstraint("class_id >= 1", name="ck_defects_class_id_positive"),
        sa.CheckConstraint("area_px > 0", name="ck_defects_area_positive"),
        sa.CheckConstraint(
            "0 <= bbox_x0 AND bbox_x0 <= bbox_x1 AND 0 <= bbox_y0 AND bbox_y0 <= bbox_y1",
            name="ck_defects_bbox_ordered",
        ),
        sa.CheckConstraint("probability >= 0 AND probability <= 1", name="ck_defects_probability_range"),
        sa.CheckConstraint("severity >= 0 AND severity <= 1", name="ck_defects_severity_range"),
    )
    op.create_index("ix_defects_captured_at", "defects", ["captured_at"])
    op.create_index("ix_defects_class_id_captured_at", "defects", ["class_id", "captured_at"])
    op.create_index("ix_defects_coil_id_class_id", "defects", ["coil_id", "class_id"])
    op.create_index(
        "ix_defects_line_id_camera_id_captured_at", "defects", ["line_id", "camera_id", "captured_at"]
    )

    op.create_table(
        "alarms",
        sa.Column("alarm_id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("frame_id", sa.Text(), nullable=False),
        sa.Column("class_id", sa.SmallInteger(), nullable=False),
        sa.Column("probability", sa.REAL(), nullable=False),
        sa.Column("area_px", sa.Integer(), nullable=False),
        _tstz("raised_at"),
        sa.Column("stream_entry_id", sa.Text(), nullable=True),
        _tstz("published_at", nullable=True),
        _tstz("acknowledged_at", nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("alarm_id", name="pk_alarms"),
        sa.UniqueConstraint("frame_id", "class_id", name="uq_alarms_frame_id_class_id"),
        sa.ForeignKeyConstraint(
            ["frame_id", "class_id"],
            ["defects.frame_id", "defects.class_id"],
            name="fk_alarms_frame_id_class_id_defects",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "(acknowledged_at IS NULL) = (acknowledged_by IS NULL)", name="ck_alarms_ack_complete"
        ),
    )
    op.create_index("ix_alarms_raised_at", "alarms", ["raised_at"])
    op.create_index(
        "ix_alarms_unpublished", "alarms", ["raised_at"], postgresql_where=sa.text("published_at IS NULL")
    )

    op.create_table(
        "feedback",
        sa.Column("feedback_id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("defect_id", sa.BigInteger(), nullable=True),
        sa.Column("alarm_id", sa.BigInteger(), nullable=True),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("operator", sa.Text(), nullable=False),
        _tstz("created_at", now_default=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("feedback_id", name="pk_feedback"),
        sa.ForeignKeyConstraint(
            ["defect_id"], ["defects.defect_id"], name="fk_feedback_defect_id_defects", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["alarm_id"], ["alarms.alarm_id"], name="fk_feedback_alarm_id_alarms", ondelete="CASCADE"
        ),
        sa.CheckConstraint("num_nonnulls(defect_id, alarm_id) = 1", name="ck_feedback_one_target"),
        sa.CheckConstraint("verdict IN ('confirmed', 'false')", name="ck_feedback_verdict_known"),
    )
    op.create_index("ix_feedback_defect_id", "feedback", ["defect_id"])
    op.create_index("ix_feedback_alarm_id", "feedback", ["alarm_id"])


def downgrade() -> None:
    for table in ("feedback", "alarms", "defects", "frames", "coils", "cameras", "lines"):
        op.drop_table(table)
