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
from confluent_kafka import KafkaError, KafkaException
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

from steelcore.alarm_message import Alarm
from steelcore.errors import SteelError
from steelcore.settings import Settings
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
    return original_headers(message) + steel_headers(message, reason, worker_id, now)


def original_headers(message: Any) -> list[tuple[str, bytes]]:
    """The message's own headers; none, and a note saying so, when they cannot be read.

    confluent-kafka decodes header keys as UTF-8 and raises for any other bytes: a producer that
    wrote such a key must still get its message dead-lettered, not crash the worker."""
    try:
        return list(message.headers() or [])
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        note = f"original headers dropped, unreadable: {type(exc).__name__}: {exc}"
        return [(DLQ_HEADER_PREFIX + "headers_dropped", note[:500].encode())]


def steel_headers(message: Any, reason: str, worker_id: str, now: datetime) -> list[tuple[str, bytes]]:
    """The worker's own dead-letter headers (``steel.dlq.*``)."""
    ours = {
        "reason": reason,
        "topic": message.topic(),
        "partition": str(message.partition()),
        "offset": str(message.offset()),
        "time": now.astimezone(UTC).isoformat(),
        "worker": worker_id,
    }
    return [(DLQ_HEADER_PREFIX + k, v.encode("utf-8", "backslashreplace")) for k, v in ours.items()]


class Outage(SteelError):
    """A step failed because a service is unreachable; the batch is retried, never dropped."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


class DeadLetterError(SteelError, RuntimeError):
    """Dead-lettered messages were not all delivered."""


class BatchAbandonedError(SteelError, RuntimeError):
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


# Refusals that no retry can fix: the letter itself is too large for the broker (or for the
# producer's own message.max.bytes). Anything else (timeouts, unreachable brokers) is an outage.
_TOO_LARGE = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
    }
)
# The value kept by the first fallback letter: enough to identify and inspect the message.
FALLBACK_VALUE_BYTES = 64 * 1024
# The last fallback drops a key longer than this too (a key counts toward the message size).
MAX_FALLBACK_KEY_BYTES = 1024


def is_refused_as_too_large(err: Any) -> bool:
    """Whether a produce error or delivery report says the message can never be accepted as it is."""
    code = err.code() if hasattr(err, "code") else None
    return code in _TOO_LARGE


class DeadLetterProducer:
    """Sends rejects to the dead-letter topic: original key and bytes, reason in the headers.

    A value larger than ``max_value_bytes`` (rejected for its size) is cut to that size, with its
    original length in a header. A letter the broker still refuses as too large (a message near
    the broker's ``message.max.bytes``, pushed over by the dead-letter headers) is sent again
    smaller, so the offset can be committed instead of the partition stalling on a refusal no
    retry can fix: first the value cut to FALLBACK_VALUE_BYTES with the original headers, then the
    worker's headers alone, no value. Each fallback says so in ``steel.dlq.cut``."""

    def __init__(
        self, producer: Any, topic: str, worker_id: str, timeout_s: float, max_value_bytes: int
    ) -> None:
        self.producer, self.topic, self.worker_id = producer, topic, worker_id
        self.timeout_s, self.max_value_bytes = timeout_s, max_value_bytes

    def send(self, rejects: Sequence[Rejected]) -> list[Rejected]:
        """Produce and wait; returns the rejects that were not delivered (an outage: retry them)."""
        delivered: set[int] = set()
        now = datetime.now(UTC)
        pending = list(range(len(rejects)))
        for level in range(3):  # whole, cut, headers only
            too_large: list[int] = []
            for i in pending:
                key, value, headers = self._letter(rejects[i], level, now)
                try:
                    self._produce(rejects[i].message, key, value, headers, i, delivered, too_large)
                except KafkaException as exc:  # refused before it left: the producer's own limit
                    if not is_refused_as_too_large(exc.args[0]):
                        raise
                    too_large.append(i)
            self.producer.flush(self.timeout_s)
            pending = too_large
            if not pending:
                break
            log.warning(
                "%d dead letter(s) refused as too large; sending them %s",
                len(pending),
                f"cut to {FALLBACK_VALUE_BYTES} bytes" if level == 0 else "as headers only",
            )
        return [r for i, r in enumerate(rejects) if i not in delivered]

    def _letter(
        self, r: Rejected, level: int, now: datetime
    ) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) of the letter at fallback ``level`` (0 whole, 1 cut, 2 headers only)."""
        m = r.message
        key, value = m.key(), m.value() or b""
        size = len(value)
        ours = steel_headers(m, r.reason, self.worker_id, now)
        if level == 2:
            note = f"refused as too large twice; value ({size} bytes) and original headers left out"
            ours.append((DLQ_HEADER_PREFIX + "original_bytes", str(size).encode()))
            small_key = key if key is None or len(key) <= MAX_FALLBACK_KEY_BYTES else None
            return small_key, b"", [*ours, (DLQ_HEADER_PREFIX + "cut", note.encode())]
        limit = self.max_value_bytes if level == 0 else min(self.max_value_bytes, FALLBACK_VALUE_BYTES)
        headers = original_headers(m) + ours
        if size > limit:
            headers.append((DLQ_HEADER_PREFIX + "original_bytes", str(size).encode()))
            value = value[:limit]
        if level == 1:
            headers.append(
                (DLQ_HEADER_PREFIX + "cut", f"refused as too large; value cut to {limit}".encode())
            )
        return key, value, headers

    def _produce(
        self,
        m: Any,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        i: int,
        delivered: set[int],
        too_large: list[int],
    ) -> None:
        def report(err: Any, _msg: Any) -> None:
            if err is None:
                delivered.add(i)
            elif is_refused_as_too_large(err):
                too_large.append(i)  # flush() runs this before send() reads the list
            else:
                log.error(
                    "dead letter for %s[%d]@%d not delivered: %s", m.topic(), m.partition(), m.offset(), err
                )

        self.producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=report)

    def close(self) -> None:
        self.producer.flush(self.timeout_s)


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


def is_kafka_outage(exc: BaseException) -> bool:
    return isinstance(exc, KafkaException | BufferError | DeadLetterError)
