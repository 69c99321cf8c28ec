"""Model lifecycle (issue 16): registered model versions, their roles, the audit trail, shadow results.

- ``model_versions``: one row per registered bundle; version V is what Triton serves as version V of
  the classifier/segmenter/postprocess/steel_cascade models.
- ``model_roles``: at most one production and one shadow row.
- ``model_audit``: every register/shadow/stop_shadow/promote/rollback, who did it, and the figures at
  the moment of a promotion.
- ``shadow_results``: the shadow version's answers, apart from frames/defects so they raise no alarms.
  No foreign key to frames (partitioned, dropped by retention; these rows are written best effort).

New empty tables only: no lock on the existing ones beyond the catalog.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tstz(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bundle", sa.Text(), nullable=False),
        _tstz("registered_at"),
        sa.Column("registered_by", sa.Text(), nullable=False),
        sa.Column("input_shape", sa.Text(), nullable=False),
        sa.Column("class_ids", postgresql.ARRAY(sa.SmallInteger()), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_model_versions"),
        sa.CheckConstraint("version >= 1", name="ck_model_versions_version_positive"),
    )
    op.create_table(
        "model_roles",
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("share", sa.REAL(), nullable=True),
        _tstz("since"),
        sa.Column("set_by", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("role", name="pk_model_roles"),
        sa.ForeignKeyConstraint(
            ["version"], ["model_versions.version"], name="fk_model_roles_version_model_versions"
        ),
        sa.CheckConstraint("role IN ('production', 'shadow')", name="ck_model_roles_role_known"),
        sa.CheckConstraint(
            "(role = 'production' AND share IS NULL) OR (role = 'shadow' AND share > 0 AND share <= 1)",
            name="ck_model_roles_share_fits_role",
        ),
    )
    op.create_table(
        "model_audit",
        sa.Column("audit_id", sa.BigInteger(), sa.Identity(), nullable=False),
        _tstz("at"),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("figures", postgresql.JSONB(), nullable=True),
        sa.PrimaryKeyConstraint("audit_id", name="pk_model_audit"),
        sa.CheckConstraint(
            "action IN ('register', 'shadow', 'stop_shadow', 'promote', 'rollback')",
            name="ck_model_audit_action_known",
        ),
    )
    op.create_index("ix_model_audit_at", "model_audit", ["at"])
    op.create_table(
        "shadow_results",
        sa.Column("frame_id", sa.Text(), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        _tstz("judged_at"),
        sa.Column("class_probs", postgresql.ARRAY(sa.REAL()), nullable=False),
        sa.Column("pixel_counts", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("rles", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("frame_id", "captured_at", "version", name="pk_shadow_results"),
    )
    op.create_index("ix_shadow_results_captured_at", "shadow_results", ["captured_at"])


def downgrade() -> None:
    op.drop_table("shadow_results")
    op.drop_table("model_audit")
    op.drop_table("model_roles")
    op.drop_table("model_versions")
