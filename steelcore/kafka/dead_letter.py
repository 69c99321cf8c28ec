"""Dead letters: messages the worker cannot process, sent to the dead-letter topic with why in
their headers (``steel.dlq.*``), so that one poison message never stalls its partition."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from steelcore.kafka.clients import new_producer
from steelcore.settings import Settings

log = logging.getLogger(__name__)

DLQ_HEADER_PREFIX = "steel.dlq."


class Reject(Protocol):
    """A message the worker refused, and why (workers.frame_batch.Rejected, a frozen dataclass)."""

    @property
    def message(self) -> Any: ...

    @property
    def reason(self) -> str: ...


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

    def send(self, rejects: Sequence[Reject]) -> list[Reject]:
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
        self, r: Reject, level: int, now: datetime
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


def dead_letter_producer(settings: Settings, worker_id: str, timeout_s: float) -> DeadLetterProducer:
    """The worker's dead-letter producer: a letter may carry a whole frame (max_frame_bytes) plus
    the dead-letter headers, so its message.max.bytes leaves 64 KiB above the frame limit."""
    producer = new_producer(settings, {"message.max.bytes": settings.max_frame_bytes + 65536})
    return DeadLetterProducer(
        producer, settings.dead_letter_topic, worker_id, timeout_s, settings.max_frame_bytes
    )
