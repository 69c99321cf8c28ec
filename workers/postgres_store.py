"""The worker's store (defects and the alarm outbox on one engine), and which database errors mean
"unreachable, retry later" rather than "these rows are wrong"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

from steelcore.postgres.frame_records import FrameRecord, StoreResult
from steelcore.settings import Settings


class PostgresStore:
    """DefectStore plus the outbox update, on one engine."""

    def __init__(self, engine: Any, settings: Settings) -> None:
        from steelcore.postgres.defect_writes import DefectStore

        self.engine = engine
        self._store = DefectStore(engine, settings)

    def write_batch(self, batch: Sequence[FrameRecord]) -> StoreResult:
        return self._store.write_batch(batch)

    def mark_published(self, published: Sequence[tuple[str, int, str]]) -> int:
        from steelcore.postgres.alarm_outbox import mark_alarms_published

        return mark_alarms_published(self.engine, published)

    def close(self) -> None:
        self.engine.dispose()


def is_db_outage(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def is_refused_row(exc: BaseException) -> bool:
    """A database error about the content of the rows (SQLSTATE class 22, data exception: a value
    out of range; class 23, a constraint violated): the same write fails every time, so retrying
    it as an outage would stall the partition forever. The worker isolates the row instead."""
    return isinstance(exc, DataError | IntegrityError) and not is_db_outage(exc)


def merge_store_results(results: Sequence[StoreResult]) -> StoreResult:
    """One StoreResult for several writes of parts of a batch."""
    return StoreResult(
        new_frame_ids=tuple(sorted(f for r in results for f in r.new_frame_ids)),
        duplicate_frame_ids=tuple(f for r in results for f in r.duplicate_frame_ids),
        defects_written=sum(r.defects_written for r in results),
        alarms_written=sum(r.alarms_written for r in results),
        images_written=sum(r.images_written for r in results),
        elapsed_ms=sum(r.elapsed_ms for r in results),
        new_alarms=tuple(a for r in results for a in r.new_alarms),
    )
