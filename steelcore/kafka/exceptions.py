"""Errors of the Kafka package, and the client library's error types for callers to catch.

confluent-kafka raises its own KafkaException (and BufferError when its local queue is full); they
are re-exported here so that code outside this package can catch them without importing the
client library, which only this package does.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from steelcore.errors import ExternalServiceError

__all__ = [
    "KafkaError",
    "KafkaException",
    "KafkaServiceError",
    "TopicsNotVisibleError",
    "is_kafka_outage",
    "is_partition_eof",
]


class KafkaServiceError(ExternalServiceError):
    """The Kafka cluster cannot be reached or did not do what was asked in time."""


class TopicsNotVisibleError(KafkaServiceError, TimeoutError):
    """Topics just created did not show in the cluster metadata in time (a TimeoutError, as before)."""


def is_kafka_outage(exc: BaseException) -> bool:
    """The client or the broker failed (unreachable, timed out, local queue full): retry later."""
    return isinstance(exc, KafkaException | BufferError)


def is_partition_eof(err: KafkaError) -> bool:
    """A consumer's "end of partition" event, which is information, not an error."""
    return err.code() == KafkaError._PARTITION_EOF
