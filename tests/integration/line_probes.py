"""Waiting on and reading back what workers did, for the integration tests that run them on the
embedded stack."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

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


def read_topic(
    settings: Settings, topic: str, count: int, timeout_s: float = 30.0, linger_s: float = 0.0
) -> list[Any]:
    """Every message of ``topic`` through a group of its own: until ``count`` have come (then
    ``linger_s`` more, so an extra copy would be seen too) or ``timeout_s`` has passed."""
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(f"reader-{uuid.uuid4().hex[:8]}", settings))
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and (len(out) < count or linger_s > 0):
            out.extend(m for m in consumer.consume(num_messages=64, timeout=0.5) if m.error() is None)
            if len(out) >= count:
                deadline = min(deadline, time.monotonic() + linger_s)
    finally:
        consumer.close()
    return out
