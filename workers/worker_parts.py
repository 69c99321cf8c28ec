"""The services a worker writes to, behind small interfaces (so tests can pass fakes), and which
of their errors mean "unreachable, retry later" rather than "this batch is wrong"."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from confluent_kafka import KafkaException
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from steelcore.settings import Settings
from workers.alarm_rules import Alarm
from workers.defect_store import FrameRecord, StoreResult
from workers.frame_batch import Rejected
from workers.triton_client import EnsembleResult

log = logging.getLogger(__name__)

DLQ_HEADER_PREFIX = "steel.dlq."


class Backoff:
    """Capped exponential backoff: initial, initial*factor, ... up to maximum, with downward jitter
    (so workers hit by one outage do not retry in lockstep, and the cap is never exceeded)."""

    def __init__(
        self,
        initial_s: float,
        maximum_s: float,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= maximum_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial_s <= maximum_s, factor >= 1 and 0 <= jitter < 1")
        self.initial_s, self.maximum_s, self.factor, self.jitter = initial_s, maximum_s, factor, jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        # The exponent is capped too: factor ** attempt overflows a float after ~1000 retries.
        base = min(self.maximum_s, self.initial_s * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0


def dead_letter_headers(message: Any, reason: str, worker_id: str, now: datetime) -> list[tuple[str, bytes]]:
    """The original headers plus why and where from: reason, source topic/partition/offset, time."""
    original = list(message.headers() or [])
    ours = {
        "reason": reason,
        "topic": message.topic(),
        "partition": str(message.partition()),
        "offset": str(message.offset()),
        "time": now.astimezone(UTC).isoformat(),
        "worker": worker_id,
    }
    return original + [(DLQ_HEADER_PREFIX + k, v.encode()) for k, v in ours.items()]


class Outage(Exception):
    """A step failed because a service is unreachable; the batch is retried, never dropped."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


class DeadLetterError(RuntimeError):
    """Dead-lettered messages were not all delivered."""


class BatchAbandonedError(RuntimeError):
    """A stop was requested and an outage outlasted the shutdown grace; the batch stays uncommitted."""


class Inference(Protocol):
    def infer_async(self, frames: np.ndarray) -> Future[EnsembleResult]: ...
    def close(self) -> None: ...


class Store(Protocol):
    def write_batch(self, batch: Sequence[FrameRecord]) -> StoreResult: ...
    def mark_published(self, published: Sequence[tuple[str, int, str]]) -> int: ...
    def close(self) -> None: ...


class AlarmPublisher(Protocol):
    def publish(self, alarms: Sequence[Alarm]) -> list[str]: ...


class DeadLetterSink(Protocol):
    def send(self, rejects: Sequence[Rejected]) -> list[Rejected]: ...
    def close(self) -> None: ...


class PostgresStore:
    """DefectStore plus the outbox update, on one engine."""

    def __init__(self, engine: Any, settings: Settings) -> None:
        from workers.defect_store import DefectStore

        self.engine = engine
        self._store = DefectStore(engine, settings)

    def write_batch(self, batch: Sequence[FrameRecord]) -> StoreResult:
        return self._store.write_batch(batch)

    def mark_published(self, published: Sequence[tuple[str, int, str]]) -> int:
        from workers.defect_store import mark_alarms_published

        return mark_alarms_published(self.engine, published)

    def close(self) -> None:
        self.engine.dispose()


class DeadLetterProducer:
    """Sends rejects to the dead-letter topic: original key and bytes, reason in the headers.

    A value larger than ``max_value_bytes`` (rejected for its size) is cut to that size, with its
    original length in a header, so the dead letter itself cannot be refused by the broker."""

    def __init__(
        self, producer: Any, topic: str, worker_id: str, timeout_s: float, max_value_bytes: int
    ) -> None:
        self.producer, self.topic, self.worker_id = producer, topic, worker_id
        self.timeout_s, self.max_value_bytes = timeout_s, max_value_bytes

    def send(self, rejects: Sequence[Rejected]) -> list[Rejected]:
        """Produce and wait; returns the rejects that were not delivered."""
        delivered: set[int] = set()
        now = datetime.now(UTC)
        for i, r in enumerate(rejects):
            m = r.message
            value = m.value() or b""
            headers = dead_letter_headers(m, r.reason, self.worker_id, now)
            if len(value) > self.max_value_bytes:
                headers.append((DLQ_HEADER_PREFIX + "original_bytes", str(len(value)).encode()))
                value = value[: self.max_value_bytes]

            def report(err: Any, _msg: Any, i: int = i, m: Any = m) -> None:
                if err is None:
                    delivered.add(i)
                else:
                    log.error(
                        "dead letter for %s[%d]@%d not delivered: %s",
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        err,
                    )

            self.producer.produce(self.topic, value=value, key=m.key(), headers=headers, on_delivery=report)
        self.producer.flush(self.timeout_s)
        return [r for i, r in enumerate(rejects) if i not in delivered]

    def close(self) -> None:
        self.producer.flush(self.timeout_s)


def is_db_outage(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def is_kafka_outage(exc: BaseException) -> bool:
    return isinstance(exc, KafkaException | BufferError | DeadLetterError)
