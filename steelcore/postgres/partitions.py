"""The weekly partitions of ``frames`` (revision 0004): create them ahead, drop them past retention.

``frames`` is partitioned by RANGE (captured_at), one partition per UTC week (Monday 00:00 to the
next Monday) plus ``frames_default`` for any other time. Partitions are recognised by their bounds
in the catalog, not by their names.

- ``create_ahead``: the partitions of the current week and the next ``weeks_ahead`` that are
  missing. Postgres refuses a new partition over rows already in the default partition (frames of
  that week stored while maintenance did not run); such a week is reported and left to the default
  (its frames are stored and served, only not dropped by week).
- ``drop_before``: partitions entirely older than the cutoff, each in its own transaction: the
  defects of its week are deleted first (their alarms and feedback follow by cascade), then the
  images of its frames, then the partition is detached and dropped, which frees its disk at once
  (no row-by-row delete, no vacuum debt). Default-partition rows older than the cutoff are deleted
  row by row.

Needs the tables' owner (creating and dropping partitions of frames is an owner's right): the login of
STEEL_POSTGRES_URL that runs the migrations, not the workers' steel_worker (INSERT only). Rows
inserted through the parent need no grant on a partition: Postgres checks the parent's privileges,
so steel_worker's INSERT on frames reaches every new partition.

DDL waits at most LOCK_TIMEOUT for its lock: a long query on frames then makes the step fail and the
next run retry it, instead of queueing every worker's insert behind it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

PARENT = "frames"
DEFAULT_PARTITION = "frames_default"
WEEK = timedelta(days=7)
WEEKS_AHEAD = 4  # a month of partitions ahead: maintenance may stop for weeks before frames spill
LOCK_TIMEOUT = "5s"
_BOUNDS = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime | None  # None for the default partition
    end: datetime | None


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    default_rows_deleted: int = 0
    problems: list[str] = field(default_factory=list)


def week_start(ts: datetime) -> datetime:
    """Monday 00:00 UTC of the week holding ``ts`` (aware)."""
    day = ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def partition_name(start: datetime) -> str:
    return f"{PARENT}_w{start:%Y%m%d}"


def is_partitioned(conn: Connection) -> bool:
    kind = conn.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": PARENT})
    return kind.scalar() == "p"


def partitions(conn: Connection) -> list[Partition]:
    """The partitions of frames with their bounds, oldest first, the default last."""
    conn.execute(text("SET LOCAL TimeZone = 'UTC'"))  # bound texts are rendered in the session zone
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": PARENT},
    ).all()
    found = []
    for name, bound in rows:
        match = _BOUNDS.search(bound or "")
        if match:
            start, end = (datetime.fromisoformat(v).astimezone(UTC) for v in match.groups())
            found.append(Partition(name, start, end))
        else:
            found.append(Partition(name, None, None))
    return sorted(found, key=lambda p: (p.start is None, p.start or datetime.min.replace(tzinfo=UTC)))


def create_ahead(engine: Engine, now: datetime, weeks_ahead: int = WEEKS_AHEAD) -> MaintenanceReport:
    report = MaintenanceReport()
    first = week_start(now)
    for k in range(weeks_ahead + 1):
        start = first + k * WEEK
        end = start + WEEK
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            existing = partitions(conn)
            if any(p.start is not None and p.start < end and start < p.end for p in existing):  # type: ignore[operator]
                continue
            if any(p.name == DEFAULT_PARTITION for p in existing):
                spilled = conn.execute(
                    text(
                        f"SELECT count(*) FROM {DEFAULT_PARTITION} "
                        "WHERE captured_at >= :start AND captured_at < :end"
                    ),
                    {"start": start, "end": end},
                ).scalar_one()
                if spilled:
                    report.problems.append(
                        f"week of {start:%Y-%m-%d}: {spilled} frame(s) already in {DEFAULT_PARTITION}, "
                        "so no partition can be created for it; they stay there (stored, kept past "
                        "retention until deleted row by row)"
                    )
                    continue
            name = partition_name(start)
            # Names and bounds come from this function's own dates, never from input.
            conn.execute(
                text(
                    f"CREATE TABLE {name} PARTITION OF {PARENT} "
                    f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                )
            )
            report.created.append(name)
    return report


def drop_before(engine: Engine, cutoff: datetime) -> MaintenanceReport:
    """Drop every weekly partition whose whole week lies before ``cutoff``; delete older default rows."""
    report = MaintenanceReport()
    with engine.connect() as conn:
        with conn.begin():
            old = [p for p in partitions(conn) if p.end is not None and p.end <= cutoff]
    for part in old:
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            bounds = {"start": part.start, "end": part.end}
            conn.execute(
                text("DELETE FROM defects WHERE captured_at >= :start AND captured_at < :end"), bounds
            )
            conn.execute(
                text(f"DELETE FROM frame_images i USING {part.name} f WHERE i.frame_id = f.frame_id"),
            )
            conn.execute(text(f"ALTER TABLE {PARENT} DETACH PARTITION {part.name}"))
            conn.execute(text(f"DROP TABLE {part.name}"))
        report.dropped.append(part.name)
    with engine.begin() as conn:
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": DEFAULT_PARTITION}).scalar() is not None:
            old_ids = f"SELECT frame_id FROM {DEFAULT_PARTITION} WHERE captured_at < :cutoff"
            conn.execute(text(f"DELETE FROM frame_images WHERE frame_id IN ({old_ids})"), {"cutoff": cutoff})
            deleted = conn.execute(
                text(f"DELETE FROM {DEFAULT_PARTITION} WHERE captured_at < :cutoff"), {"cutoff": cutoff}
            )
            report.default_rows_deleted = deleted.rowcount
    return report
