"""Index defects by (coil_id, captured_at): a coil's defects newest first without a scan.

Built inside the migration's transaction, which blocks writes to defects while it builds. On a
large live table a DBA can build it first without blocking,
``CREATE INDEX CONCURRENTLY ix_defects_coil_id_captured_at ON defects (coil_id, captured_at)``,
and this revision then finds it and moves on.

Revision ID: 0003
Revises: 0002
Create Date: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_defects_coil_id_captured_at", "defects", ["coil_id", "captured_at"], if_not_exists=True
    )


def downgrade() -> None:
    op.drop_index("ix_defects_coil_id_captured_at", table_name="defects")
