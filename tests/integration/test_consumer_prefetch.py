"""The workers' consumer settings keep a backlog flowing from the real embedded broker.

The prefetch bounds are low on purpose (steelcore.kafka.client_config), and librdkafka postpones
the next fetch of a partition whose queue reached them by fetch.queue.backoff.ms, a second by
default: a worker then drained its queue and waited, and a backlog went through at half the
ensemble's speed, in bursts. Here a consumer takes batches of 8 with a little work between them,
as a worker does, and no wait between two deliveries may come near that second.
"""

from __future__ import annotations

import itertools
import time
import uuid

from steelcore.kafka.clients import new_admin, new_consumer, new_producer
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.settings import Settings

MESSAGES = 96
BATCH = 8
WORK_S = 0.03  # per batch: the queue of 16 is emptied within 0.1 s
LONGEST_GAP_S = 0.5


def test_a_backlog_drains_without_waiting_for_the_fetch_backoff(
    kafka_url: str, stack_settings: Settings
) -> None:
    topic = f"steel.test.prefetch.{uuid.uuid4().hex[:8]}"
    assert ensure_topics(new_admin(stack_settings), [topic], partitions=1) == [topic]
    producer = new_producer(stack_settings)
    payload = bytes(200_000)  # about a JPEG frame
    for i in range(MESSAGES):
        producer.produce(topic, key=b"cam", value=payload, headers=[("i", str(i).encode())])
        producer.poll(0)
    assert producer.flush(30) == 0

    consumer = new_consumer(f"test-{uuid.uuid4().hex[:8]}", stack_settings)
    try:
        consumer.subscribe([topic])
        deliveries: list[float] = []
        received = 0
        deadline = time.monotonic() + 60
        while received < MESSAGES and time.monotonic() < deadline:
            got = [m for m in consumer.consume(num_messages=BATCH, timeout=0.2) if m.error() is None]
            if got:
                deliveries.append(time.monotonic())
                received += len(got)
                time.sleep(WORK_S)
    finally:
        consumer.close()
    assert received == MESSAGES
    gaps = [b - a for a, b in itertools.pairwise(deliveries)]
    assert max(gaps) < LONGEST_GAP_S, f"deliveries stalled: gaps {[round(g, 2) for g in gaps]} s"
