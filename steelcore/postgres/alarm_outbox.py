"""The alarm outbox: alarms stored by DefectStore but not yet confirmed on the Redis stream
(``published_at IS NULL``), read and relayed oldest first, then marked with their stream entry id.

Workers publish an alarm right after the frame's transaction; the relay (workers/alarm_relay.py)
publishes what a crash or a Redis outage left behind. Delivery is at least once: an alarm may
reach the stream twice, never zero times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, Select, bindparam, select, update

from steelcore.frame_message import FrameIdentity
from steelcore.postgres.frame_records import require_aware
from steelcore.postgres.schema import alarm_columns, alarm_defect, alarms, defects, frames


@dataclass(frozen=True)
class PendingAlarm(FrameIdentity):
    """A stored alarm not yet confirmed on the Redis stream, with what a publisher needs."""

    alarm_id: int
    class_id: int
    probability: float
    area_px: int
    raised_at: datetime


def _unpublished(limit: int, raised_before: datetime | None = None) -> Select:
    """Alarms stored but not yet published, oldest first (served by ix_alarms_unpublished)."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    stmt = (
        select(*alarm_columns, defects.c.captured_at, frames.c.position_m)
        .join(defects, alarm_defect)
        .join(frames, frames.c.frame_id == alarms.c.frame_id)
        .where(alarms.c.published_at.is_(None))
        .order_by(alarms.c.raised_at, alarms.c.alarm_id)
        .limit(limit)
    )
    if raised_before is not None:
        require_aware("raised_before", raised_before)
        stmt = stmt.where(alarms.c.raised_at < raised_before)
    return stmt


def unpublished_alarms(engine: Engine, limit: int = 1000) -> list[PendingAlarm]:
    """Alarms stored but not yet published, oldest first (served by ix_alarms_unpublished)."""
    with engine.connect() as conn:
        return [PendingAlarm(**row._mapping) for row in conn.execute(_unpublished(limit))]


def relay_unpublished_alarms(
    engine: Engine,
    publish: Callable[[Sequence[PendingAlarm]], Sequence[str]],
    raised_before: datetime,
    limit: int,
) -> int:
    """Publish alarms raised before ``raised_before`` and still unpublished, oldest first, and
    mark them with the stream entry ids ``publish`` returns; the number relayed.

    One transaction holds the rows (FOR UPDATE SKIP LOCKED) from the select to the mark, so the
    relays of several workers each take different rows instead of publishing one alarm twice. If
    ``publish`` raises, nothing is marked and its error propagates; if the mark fails after a
    publish, the next relay publishes again under the same alarm id (at least once)."""
    stmt = _unpublished(limit, raised_before).with_for_update(of=alarms, skip_locked=True)
    with engine.begin() as conn:
        pending = [PendingAlarm(**row._mapping) for row in conn.execute(stmt)]
        if not pending:
            return 0
        entry_ids = list(publish(pending))
        if len(entry_ids) != len(pending):
            raise RuntimeError(f"published {len(pending)} alarms, got {len(entry_ids)} entry ids")
        when = datetime.now(UTC)
        conn.execute(
            update(alarms)
            .where(alarms.c.alarm_id == bindparam("a"))
            .values(stream_entry_id=bindparam("e"), published_at=bindparam("t")),
            [{"a": p.alarm_id, "e": e, "t": when} for p, e in zip(pending, entry_ids, strict=True)],
        )
    return len(pending)


def mark_alarms_published(
    engine: Engine, published: Iterable[tuple[str, int, str]], published_at: datetime | None = None
) -> int:
    """Record (frame_id, class_id, stream_entry_id) of alarms now on the Redis stream. An alarm
    already marked keeps its first entry id. Returns the number of alarms marked now."""
    when = published_at or datetime.now(UTC)
    require_aware("published_at", when)
    rows = [{"f": f, "c": c, "e": e, "t": when} for f, c, e in published]
    if not rows:
        return 0
    stmt = (
        update(alarms)
        .where(
            alarms.c.frame_id == bindparam("f"),
            alarms.c.class_id == bindparam("c"),
            alarms.c.published_at.is_(None),
        )
        .values(stream_entry_id=bindparam("e"), published_at=bindparam("t"))
    )
    with engine.begin() as conn:
        return conn.execute(stmt, rows).rowcount
