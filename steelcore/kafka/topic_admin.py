"""Creating and deleting topics with an admin client (``new_admin``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from steelcore.kafka.exceptions import TopicsNotVisibleError

log = logging.getLogger(__name__)


def ensure_topics(
    admin: AdminClient,
    names: Iterable[str],
    partitions: int,
    *,
    configs: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Idempotent: topics that exist (or that another process creates meanwhile) are left as they are;
    one with fewer partitions than asked is logged, not changed. Returns once every topic is
    visible in the cluster metadata, so a producer or consumer can use it at once.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted or any(not name for name in wanted):
        raise ValueError(f"ensure_topics: topic names must be non-empty strings, got {wanted!r}")
    if partitions < 1:
        raise ValueError(f"ensure_topics: partitions must be >= 1, got {partitions}")

    existing = admin.list_topics(timeout=timeout_s).topics
    for name in wanted:
        if name in existing and len(existing[name].partitions) < partitions:
            log.warning(
                "topic %s has %d partitions, fewer than the %d asked for; left unchanged",
                name,
                len(existing[name].partitions),
                partitions,
            )
    missing = [name for name in wanted if name not in existing]
    created: list[str] = []
    if missing:
        new_topics = [
            # -1 = the broker's default.replication.factor, so a 3-broker cluster with
            # min.insync.replicas=2 gets replicated topics and the embedded broker its single copy.
            NewTopic(name, num_partitions=partitions, replication_factor=-1, config=dict(configs or {}))
            for name in missing
        ]
        futures = admin.create_topics(new_topics, operation_timeout=timeout_s, request_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        _wait_for_topics(admin, missing, timeout_s)
        log.info("created topics %s with %d partitions", created, partitions)
    return created


def _wait_for_topics(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        absent = [name for name in names if name not in topics or topics[name].error is not None]
        if not absent:
            return
        if time.monotonic() >= deadline:
            raise TopicsNotVisibleError(
                f"topics {absent} not visible in cluster metadata after {timeout_s:.0f} s"
            )
        time.sleep(0.05)


def delete_topics(admin: AdminClient, names: list[str]) -> list[str]:
    """Delete ``names``; return those deleted here. One already gone (another worker deleted it
    first) is skipped quietly; any other failure is logged and left for the next call."""
    if not names:
        return []
    deleted = []
    for name, future in admin.delete_topics(names, operation_timeout=10, request_timeout=15).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.warning("could not delete %s: %s", name, exc)
            continue
        deleted.append(name)
    return deleted
