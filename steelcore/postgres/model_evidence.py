"""What the health page's "Models" section and `steel models promote` read about model versions:
the shadowed frames with production's masks and the operator verdicts on them (the rows
steelcore.model_agreement turns into figures and the gate), versions with their roles, the
lifecycle audit trail.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, and_, func, select, tuple_

from steelcore.model_agreement import Evidence, ShadowFrame, VerdictRow
from steelcore.postgres.schema import (
    defects,
    frames,
    model_audit,
    model_roles,
    model_versions,
    shadow_results,
)
from steelcore.postgres.verdicts import latest_verdicts


def read_evidence(
    conn: Any,
    shadow_version: int,
    *,
    production_version: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> Evidence:
    """The shadowed frames of ``shadow_version`` (optionally only those production_version judged,
    captured in [since, until); the newest ``limit`` of them) with production's masks, and the latest
    verdict on each of their production defects. ``conn`` is a SQLAlchemy Connection or Engine."""
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return read_evidence(
                c,
                shadow_version,
                production_version=production_version,
                since=since,
                until=until,
                limit=limit,
            )
    s = shadow_results
    chosen = (
        select(s.c.frame_id, s.c.captured_at, s.c.rles, s.c.pixel_counts)
        .select_from(
            s.join(frames, and_(frames.c.frame_id == s.c.frame_id, frames.c.captured_at == s.c.captured_at))
        )
        .where(s.c.version == int(shadow_version))
    )
    if production_version is not None:
        chosen = chosen.where(frames.c.model_version == str(int(production_version)))
    if since is not None:
        chosen = chosen.where(s.c.captured_at >= since)
    if until is not None:
        chosen = chosen.where(s.c.captured_at < until)
    if limit is not None:
        chosen = chosen.order_by(s.c.captured_at.desc()).limit(int(limit))
    shadowed = chosen.cte("shadowed")
    # A defect meets its shadowed frame by the whole key: frames' partitions are pruned by week.
    on_shadowed = and_(
        defects.c.frame_id == shadowed.c.frame_id, defects.c.captured_at == shadowed.c.captured_at
    )
    rows = conn.execute(select(shadowed)).all()
    masks = conn.execute(
        select(defects.c.frame_id, defects.c.class_id, defects.c.rle).select_from(
            defects.join(shadowed, on_shadowed)
        )
    ).all()
    of_shadowed = tuple_(defects.c.frame_id, defects.c.captured_at).in_(
        select(shadowed.c.frame_id, shadowed.c.captured_at)
    )
    latest = latest_verdicts(of_shadowed)
    verdicts = conn.execute(latest).all()
    production: dict[str, dict[int, str]] = {}
    for m in masks:
        production.setdefault(m.frame_id, {})[int(m.class_id)] = m.rle
    return Evidence(
        frames=[
            ShadowFrame(
                frame_id=r.frame_id,
                production=production.get(r.frame_id, {}),
                shadow_rles=list(r.rles),
                shadow_pixels=[int(p) for p in r.pixel_counts],
            )
            for r in rows
        ],
        verdicts=[VerdictRow(v.frame_id, int(v.class_id), v.verdict) for v in verdicts],
    )


def versions_with_roles(engine: Engine) -> list[Row[Any]]:
    """Every registered version (all model_versions columns) with its role and share, newest first;
    a version without a role has None there."""
    stmt = (
        select(model_versions, model_roles.c.role, model_roles.c.share)
        .select_from(model_versions.outerjoin(model_roles, model_roles.c.version == model_versions.c.version))
        .order_by(model_versions.c.version.desc())
    )
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())


def last_shadowed_version(engine: Engine) -> int | None:
    """The version that judged the newest shadowed frame."""
    stmt = select(shadow_results.c.version).order_by(shadow_results.c.captured_at.desc()).limit(1)
    with engine.connect() as conn:
        return conn.execute(stmt).scalar_one_or_none()


def shadowed_frame_count(engine: Engine, version: int) -> int:
    """How many frames ``version`` has judged as the shadow."""
    stmt = select(func.count()).select_from(shadow_results).where(shadow_results.c.version == version)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def shadow_started_against(engine: Engine, shadow: int) -> int | None:
    """The production version the latest shadow run of ``shadow`` was started beside (audit)."""
    stmt = (
        select(model_audit.c.previous_version)
        .where(model_audit.c.action == "shadow", model_audit.c.version == shadow)
        .order_by(model_audit.c.at.desc(), model_audit.c.audit_id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(stmt).scalar_one_or_none()


def audit_trail(engine: Engine, limit: int) -> list[Row[Any]]:
    """The newest ``limit`` lifecycle audit rows, newest first."""
    stmt = select(model_audit).order_by(model_audit.c.at.desc(), model_audit.c.audit_id.desc()).limit(limit)
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())
