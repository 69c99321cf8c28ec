"""The one place Kafka clients are built: a producer, a consumer and an admin client, each from its
config in client_config (so the security settings and the bounds reach every client), with
librdkafka's log lines sent to the ``librdkafka`` logger instead of straight to stderr.

TopicPartition, OFFSET_BEGINNING and OFFSET_INVALID are re-exported for code that names partitions
and offsets (commits, seeks, assignments) without importing the client library.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from steelcore.kafka.client_config import admin_config, consumer_config, producer_config
from steelcore.settings import Settings

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_INVALID",
    "BrokerIncarnation",
    "TopicPartition",
    "count_brokers",
    "new_admin",
    "new_consumer",
    "new_producer",
]

log = logging.getLogger(__name__)


def _logged(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"logger": logging.getLogger("librdkafka"), **(overrides or {})}


def new_producer(settings: Settings | None = None, overrides: Mapping[str, Any] | None = None) -> Producer:
    return Producer(producer_config(settings, _logged(overrides)))


def new_consumer(
    group_id: str, settings: Settings | None = None, overrides: Mapping[str, Any] | None = None
) -> Consumer:
    return Consumer(consumer_config(group_id, settings, _logged(overrides)))


def new_admin(settings: Settings | None = None, overrides: Mapping[str, Any] | None = None) -> AdminClient:
    return AdminClient(admin_config(settings, _logged(overrides)))


def count_brokers(config: Mapping[str, Any], timeout_s: float = 2.0) -> int:
    """Fetch cluster metadata with an admin client built from ``config``; return the broker count.

    ``config`` is given whole: the embedded broker's launcher probes its own plaintext listener
    before any settings point at it. Raises KafkaException when the cluster does not answer within
    timeout_s.
    """
    admin = AdminClient({**config, "logger": logging.getLogger("librdkafka")})
    return len(admin.list_topics(timeout=timeout_s).brokers)


class BrokerIncarnation:
    """Notices that the broker behind a client is a new, empty one (the embedded broker restarted).

    The embedded broker keeps its log in memory, so a restart loses every topic, message and
    committed offset, while clients reconnect as if nothing happened: a consumer may go on
    fetching from its old positions in the new log and skip what was written there first, and a
    group finds no committed offsets. stack.kafka_broker gives every start its own cluster id, so
    ``changed(client)`` (any Producer, Consumer or AdminClient, which all answer list_topics) is
    True once the cluster id differs from the one first seen. A client that sees it should reset
    its consumers to the committed offsets (none: the earliest) and re-create its topics; frames
    the old broker had acknowledged but nobody had consumed are lost, which only a durable,
    replicated Kafka prevents.
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.cluster_id: str | None = None

    def changed(self, client: Any) -> bool:
        """Ask the broker its cluster id; True when it differs from the last one seen (the first
        call only records it). Raises KafkaException when the broker is down."""
        current = client.list_topics(timeout=self.timeout_s).cluster_id
        previous, self.cluster_id = self.cluster_id, current
        if previous is not None and current != previous:
            log.error(
                "the Kafka broker is a new incarnation (cluster id %s, was %s): its log, topics and "
                "committed offsets are gone",
                current,
                previous,
            )
            return True
        return False
