"""Write side of the model registry (``model_versions``, ``model_roles``, ``model_audit``): what the
lifecycle commands (`steel models`, stack.model_lifecycle) change, as the tables' owner. Workers
only read (steelcore.postgres.model_registry); their login may not write these tables.

Every function runs on the caller's connection and commits nothing: a lifecycle command makes
its Triton change and its registry change, then commits once, so a refused or failed command
leaves the registry as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from steelcore.postgres.schema import model_audit, model_roles, model_versions

# Any constant serialises the lifecycle commands; this one reads "steel models" in ASCII.
_LOCK_KEY = 0x737465656C6D6F64


@contextmanager
def lifecycle_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding the registry's advisory lock for the whole block: one lifecycle
    command at a time. Whatever the block did not commit is rolled back before the unlock."""
    with engine.connect() as conn:
        conn.execute(select(func.pg_advisory_lock(_LOCK_KEY)))
        conn.commit()
        try:
            yield conn
        finally:
            conn.rollback()
            conn.execute(select(func.pg_advisory_unlock(_LOCK_KEY)))
            conn.commit()


def registered_version(conn: Connection, version: int) -> Any:
    """The ``model_versions`` row of ``version`` (bundle, input_shape, class_ids...)."""
    return conn.execute(select(model_versions).where(model_versions.c.version == version)).one()


def newest_registered_version(conn: Connection) -> int:
    """The highest version ever registered; 0 for an empty registry."""
    return conn.execute(select(func.max(model_versions.c.version))).scalar() or 0


def register_version(
    conn: Connection,
    version: int,
    *,
    bundle: str,
    input_shape: str,  # "HxW"
    class_ids: Sequence[int],
    actor: str,
) -> None:
    conn.execute(
        insert(model_versions).values(
            version=version,
            bundle=bundle,
            registered_at=func.now(),
            registered_by=actor,
            input_shape=input_shape,
            class_ids=list(class_ids),
        )
    )


def record_audit(
    conn: Connection,
    action: str,
    version: int,
    actor: str,
    *,
    previous: int | None = None,
    forced: bool = False,
    figures: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        insert(model_audit).values(
            at=func.now(),
            action=action,
            version=version,
            previous_version=previous,
            actor=actor,
            forced=forced,
            figures=figures,
        )
    )


def set_role(conn: Connection, role: str, version: int, actor: str, share: float | None) -> None:
    """Give ``role`` ("production" or "shadow") to ``version``, replacing whoever had it."""
    stmt = pg_insert(model_roles).values(
        role=role, version=version, share=share, since=func.now(), set_by=actor
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[model_roles.c.role],
            set_={"version": version, "share": share, "since": func.now(), "set_by": actor},
        )
    )


def clear_shadow_role(conn: Connection) -> None:
    conn.execute(delete(model_roles).where(model_roles.c.role == "shadow"))


def version_replaced_by(conn: Connection, production: int) -> int | None:
    """The version ``production`` replaced when it was last promoted or rolled back to; None when
    it replaced none (the first production)."""
    return conn.execute(
        select(model_audit.c.previous_version)
        .where(model_audit.c.action.in_(("promote", "rollback")), model_audit.c.version == production)
        .order_by(model_audit.c.audit_id.desc())
        .limit(1)
    ).scalar()
