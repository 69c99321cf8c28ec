"""The defect schema as declared: names, keys, indexes and the migration chain (no database)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import DateTime, Index, UniqueConstraint
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from steelcore.postgres import migrate, schema
from steelcore.postgres.engine import sqlalchemy_url

PG_IDENTIFIER_MAX = 63


def _index_columns(table) -> set[tuple[str, ...]]:
    return {tuple(c.name for c in ix.columns) for ix in table.indexes}


def _unique_columns(table) -> set[tuple[str, ...]]:
    return {
        tuple(c.name for c in con.columns) for con in table.constraints if isinstance(con, UniqueConstraint)
    }


def test_every_table_of_the_pipeline_issue_is_declared() -> None:
    names = {t.name for t in schema.TABLES}
    pipeline = {"lines", "cameras", "coils", "frames", "defects", "alarms", "feedback", "frame_images"}
    lifecycle = {"model_versions", "model_roles", "model_audit", "shadow_results"}
    assert names == pipeline | lifecycle
    assert set(schema.metadata.tables) == names


@pytest.mark.parametrize("table", schema.TABLES, ids=lambda t: t.name)
def test_constraint_and_index_names_follow_the_convention(table) -> None:
    prefixes = {"PrimaryKeyConstraint": "pk_", "ForeignKeyConstraint": "fk_", "UniqueConstraint": "uq_"}
    prefixes["CheckConstraint"] = "ck_"
    for con in table.constraints:
        name = con.name
        assert name, f"{table.name}: unnamed {type(con).__name__}"
        assert name.startswith(prefixes[type(con).__name__]), name
        assert len(name) <= PG_IDENTIFIER_MAX, name
    for ix in table.indexes:
        assert isinstance(ix, Index)
        assert ix.name.startswith("ix_") and len(ix.name) <= PG_IDENTIFIER_MAX, ix.name


def test_every_timestamp_is_timezone_aware() -> None:
    stamps = [c for t in schema.TABLES for c in t.columns if isinstance(c.type, DateTime)]
    assert len(stamps) >= 10
    assert all(c.type.timezone for c in stamps), [f"{c.table.name}.{c.name}" for c in stamps]


def test_frame_id_is_the_natural_key_and_defects_alarms_are_unique_per_class() -> None:
    # frames is partitioned by captured_at, which its key must include (revision 0004).
    assert [c.name for c in schema.frames.primary_key.columns] == ["frame_id", "captured_at"]
    assert schema.frames.dialect_options["postgresql"]["partition_by"] == "RANGE (captured_at)"
    assert ("frame_id", "class_id") in _unique_columns(schema.defects)
    assert ("frame_id", "class_id") in _unique_columns(schema.alarms)


def test_history_queries_have_indexes() -> None:
    frames_ix = _index_columns(schema.frames)
    defects_ix = _index_columns(schema.defects)
    assert ("captured_at",) in frames_ix and ("captured_at",) in defects_ix
    assert ("class_id", "captured_at") in defects_ix
    assert ("line_id", "camera_id", "captured_at") in defects_ix
    assert ("line_id", "camera_id", "captured_at") in frames_ix
    assert any(cols[0] == "coil_id" for cols in defects_ix)
    assert any(cols[0] == "coil_id" for cols in frames_ix)


def test_alarm_points_at_its_defect_and_feedback_at_exactly_one_target() -> None:
    fks = {tuple(fk.column_keys): fk.referred_table.name for fk in schema.alarms.foreign_key_constraints}
    assert fks[("frame_id", "class_id")] == "defects"
    checks = {c.name: str(c.sqltext) for c in schema.feedback.constraints if c.name.startswith("ck_")}
    assert "num_nonnulls(defect_id, alarm_id) = 1" in checks["ck_feedback_one_target"]
    for verdict in schema.VERDICTS:
        assert f"'{verdict}'" in checks["ck_feedback_verdict_known"]


def test_ddl_compiles_for_postgres() -> None:
    dialect = postgresql.dialect()
    ddl = "\n".join(str(CreateTable(t).compile(dialect=dialect)) for t in schema.TABLES)
    ddl += "\n".join(str(CreateIndex(ix).compile(dialect=dialect)) for t in schema.TABLES for ix in t.indexes)
    assert "class_probs REAL[]" in ddl
    assert "WHERE published_at IS NULL" in ddl
    assert ddl.count("TIMESTAMP WITH TIME ZONE") >= 10


def test_migrations_form_one_chain_ending_at_the_initial_revision() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(scripts.get_heads()) == 1
    assert migrate.head_revision() == scripts.get_current_head()
    base = [s for s in scripts.walk_revisions() if s.down_revision is None]
    assert [s.revision for s in base] == ["0001"]
    assert Path(base[0].path).name == "0001_initial.py"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg",
            "postgresql+psycopg://postgres:@/postgres?host=%2Ftmp%2Fpg",
        ),
        ("postgres://u:p@db:5432/steel", "postgresql+psycopg://u:p@db:5432/steel"),
        ("postgresql+psycopg://u@db/steel", "postgresql+psycopg://u@db/steel"),
    ],
)
def test_urls_get_the_psycopg3_driver(given: str, expected: str) -> None:
    assert sqlalchemy_url(given) == expected


def test_non_postgres_url_is_rejected_without_printing_the_password() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL") as exc:
        sqlalchemy_url("mysql://u:secret@db/steel")
    assert "secret" not in str(exc.value)


def test_offline_sql_creates_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert migrate.main(["sql"]) == 0
    out = capsys.readouterr().out
    for table in schema.TABLES:
        assert f"CREATE TABLE {table.name} (" in out
    assert "INSERT INTO alembic_version" in out
