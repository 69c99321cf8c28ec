"""The worker's janitor step: the bucket deleter (steelcore.kafka.consumed_buckets), which the worker
runs on a timer (workers.periodic_thread)."""

from __future__ import annotations

import logging

from steelcore.kafka.consumed_buckets import ConsumedBucketDeleter
from steelcore.kafka.exceptions import KafkaException

log = logging.getLogger(__name__)


def delete_consumed_buckets(deleter: ConsumedBucketDeleter) -> None:
    """One pass of ``deleter.delete_consumed``; a broker outage only postpones it to the next pass."""
    try:
        deleter.delete_consumed()
    except (KafkaException, TimeoutError) as exc:  # the broker is away: try again next time
        log.warning("bucket check failed: %s", exc)
