"""steelcore.postgres.model_registry without a database: the shadow sample and the role rows' meaning."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from steelcore.postgres import model_registry, schema


def test_shadow_pick_is_stable_and_takes_about_the_share() -> None:
    ids = [f"L1/cam1/{i:06d}" for i in range(20_000)]
    picked = [f for f in ids if model_registry.shadow_pick(f, 0.1)]
    assert 0.09 < len(picked) / len(ids) < 0.11
    # A redelivered frame is picked again, and a larger share keeps every frame a smaller one took.
    assert picked == [f for f in ids if model_registry.shadow_pick(f, 0.1)]
    wider = {f for f in ids if model_registry.shadow_pick(f, 0.3)}
    assert set(picked) <= wider


@pytest.mark.parametrize(("share", "expected"), [(0.0, False), (-1.0, False), (1.0, True), (2.0, True)])
def test_shadow_pick_edges(share: float, expected: bool) -> None:
    assert all(model_registry.shadow_pick(f"f{i}", share) is expected for i in range(50))


def test_read_roles_and_bundles_from_rows() -> None:
    # SQLite stands in for Postgres: read_roles only selects three plain columns.
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE model_roles (role TEXT, version INTEGER, share REAL)")
        conn.exec_driver_sql("CREATE TABLE model_versions (version INTEGER, bundle TEXT)")
        assert model_registry.read_roles(conn) == model_registry.NO_ROLES
        conn.exec_driver_sql("INSERT INTO model_versions VALUES (1, 'default'), (2, 'synthetic')")
        conn.exec_driver_sql("INSERT INTO model_roles VALUES ('production', 1, NULL), ('shadow', 2, 0.25)")
    assert model_registry.read_roles(engine) == model_registry.Roles(1, 2, 0.25)
    assert model_registry.version_bundles(engine) == {1: "default", 2: "synthetic"}
    assert schema.model_roles.c.share.nullable
