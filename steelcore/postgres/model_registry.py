"""Read side of the model registry (tables ``model_versions`` and ``model_roles``, revision 0005).

Workers, the dashboard and the lifecycle CLI (stack.model_lifecycle, which also writes) read which
version serves production, which one shadows it and on what share of frames, and which bundle each
version is. Everything here only reads, so the workers' ``steel_writer`` login may call it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from steelcore.postgres.schema import model_roles, model_versions

# sha256 gives 256 bits; the first 8 bytes are plenty to compare against a share.
_PICK_BYTES = 8
_PICK_SCALE = float(1 << (8 * _PICK_BYTES))


@dataclass(frozen=True)
class Roles:
    """Who serves: ``None`` where the role is not set (no registry yet, or no shadow running)."""

    production: int | None
    shadow: int | None
    shadow_share: float | None


NO_ROLES = Roles(production=None, shadow=None, shadow_share=None)


def _rows(conn_or_engine: Connection | Engine, statement: Any) -> list[Any]:
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return list(conn.execute(statement))
    return list(conn_or_engine.execute(statement))


def read_roles(conn_or_engine: Connection | Engine) -> Roles:
    """The production and shadow versions; ``NO_ROLES`` when nothing is registered.

    Database errors propagate: a worker decides itself to keep its last roles on an error.
    """
    rows = _rows(conn_or_engine, select(model_roles.c.role, model_roles.c.version, model_roles.c.share))
    by_role = {row.role: row for row in rows}
    production = by_role.get("production")
    shadow = by_role.get("shadow")
    return Roles(
        production=production.version if production is not None else None,
        shadow=shadow.version if shadow is not None else None,
        shadow_share=float(shadow.share) if shadow is not None and shadow.share is not None else None,
    )


def version_bundles(conn_or_engine: Connection | Engine) -> dict[int, str]:
    """Every registered version and the bundle (folder under models/) it was made from."""
    rows = _rows(conn_or_engine, select(model_versions.c.version, model_versions.c.bundle))
    return {int(row.version): str(row.bundle) for row in rows}


def registered_versions(conn_or_engine: Connection | Engine) -> list[Any]:
    """Every ``model_versions`` row, oldest version first."""
    return _rows(conn_or_engine, select(model_versions).order_by(model_versions.c.version))


def shadow_pick(frame_id: str, share: float) -> bool:
    """Whether the shadow also judges this frame.

    A hash of the frame id, not a random draw: a redelivered frame is picked again (or not), so its
    shadow result is written once (ON CONFLICT) and the sample does not grow with redeliveries.
    """
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.sha256(frame_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:_PICK_BYTES], "big") / _PICK_SCALE < share
