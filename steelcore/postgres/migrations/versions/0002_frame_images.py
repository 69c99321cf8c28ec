"""frame_images: the received image of each frame with a defect, kept for a retention period.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "frame_images",
        sa.Column("frame_id", sa.Text(), nullable=False),
        sa.Column("encoding", sa.Text(), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("frame_id", name="pk_frame_images"),
        sa.ForeignKeyConstraint(
            ["frame_id"], ["frames.frame_id"], name="fk_frame_images_frame_id_frames", ondelete="CASCADE"
        ),
        sa.CheckConstraint("encoding IN ('jpeg', 'png', 'raw')", name="ck_frame_images_encoding_known"),
        sa.CheckConstraint("length(image) > 0", name="ck_frame_images_image_not_empty"),
    )
    op.create_index("ix_frame_images_stored_at", "frame_images", ["stored_at"])
    # JPEG and PNG bytes do not compress: store them out of line without trying (saves CPU per row).
    op.execute("ALTER TABLE frame_images ALTER COLUMN image SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("frame_images")
