"""Waiting on and reading back what workers did, for the integration tests that run them on the
embedded stack."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, text

from steelcore.kafka.client_config import admin_config, consumer_config
from steelcore.settings import Settings


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str = "condition", poll_s: float = 0.25
) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def count(engine: Engine, sql: str) -> int:
    """The one integer ``sql`` selects."""
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def committed_total(settings: Settings) -> int:
    """Offsets the worker group has committed on the frames topic, summed over its partitions."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    topic = AdminClient(admin_config(settings)).list_topics(settings.frames_topic, timeout=10).topics
    partitions = [TopicPartition(settings.frames_topic, p) for p in topic[settings.frames_topic].partitions]
    probe = Consumer(consumer_config(settings.consumer_group, settings))
    try:
        return sum(max(tp.offset, 0) for tp in probe.committed(partitions, timeout=10))
    finally:
        probe.close()
