"""The worker's store: defects and the alarm outbox on one engine (steelcore.postgres says which
of its errors mean "unreachable, retry later" and which "these rows are wrong")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
