"""The one place Kafka client configs are made from settings (confluent-kafka / librdkafka keys).

Always, for every client: bootstrap servers from service_urls and the security settings
(SASL/TLS). Producers use acks=all and are idempotent (except on the embedded broker, below);
consumers never auto-commit (the worker commits a batch's offsets itself, after the durable
write), start from the earliest offset, and prefetch a bounded amount (librdkafka's defaults would
queue up to 100,000 messages or 64 MB in the process while a slow Triton or database holds the
worker: the backlog belongs in the broker).

Only against the embedded Tansu broker, workarounds are added: Tansu does not answer a waiting
fetch early (so fetch.wait.max.ms is short); every join or rebalance waits session.timeout.ms / 2
(so the session timeout is short, with a heartbeat well inside it); and a restart of its memory
storage forgets every producer id, which an idempotent producer never recovers from (it bumps
its epoch and retries "unknown producer id" until the message times out), so producers there
are not idempotent but keep one request in flight, which still keeps each partition in order
(a retry may duplicate a message; the workers' writes are idempotent on frame_id). A real Kafka
cluster keeps librdkafka's defaults for those.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from steelcore.service_urls import is_embedded, kafka_bootstrap
from steelcore.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Against Tansu: each round of a join or rebalance waits session/2 = 1 s instead of 23 s at
# librdkafka's 45 s default. 6000 ms (3 s) until session 8, when topic rotation still rebalanced the
# group every bucket period: in side-by-side runs with 20 s buckets 2000 ms took the steady p50 from
# 0.74-1.61 s to 0.16-0.17 s (docs/reliability.md, item 10). Since session 9 buckets cost no
# rebalance; a worker that joins, leaves or dies still does, and a dead worker's partitions move
# after this timeout. The heartbeat, on librdkafka's own thread, stays four times inside the
# session: a worker busy with a batch is not evicted.
EMBEDDED_SESSION_TIMEOUT_MS = 2000
EMBEDDED_HEARTBEAT_INTERVAL_MS = 500
# Tansu holds a fetch for the whole wait even when data arrives; 10 ms gave p50 3 ms end to end.
EMBEDDED_FETCH_WAIT_MAX_MS = 10

# Consumer prefetch bounds (every broker). Per partition, librdkafka stops fetching at
# CONSUMER_PREFETCH_MESSAGES queued messages; the whole consumer queue stops at
# CONSUMER_PREFETCH_KBYTES; one fetch response carries at most CONSUMER_FETCH_MAX_BYTES (a single
# larger message is still delivered whole: the broker answers with at least one message). So a
# worker holds at most its batch, about PREFETCH_MESSAGES per assigned partition and one fetch response.
CONSUMER_PREFETCH_MESSAGES = 16
CONSUMER_PREFETCH_KBYTES = 16 * 1024
CONSUMER_FETCH_MAX_BYTES = 4 * 1024 * 1024
# Once a partition's queue reaches those bounds, librdkafka postpones its next fetch by
# fetch.queue.backoff.ms, 1000 ms by default: with bounds this low a worker emptied the queue in
# a third of that and then waited (a backlog drained at half the ensemble's speed, in bursts of a
# second). Checking again after a short wait keeps the queue fed; the bounds stay as they are.
CONSUMER_FETCH_QUEUE_BACKOFF_MS = 20

SECRET_KEYS = frozenset({"sasl.password", "ssl.key.password", "ssl.keystore.password"})
_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_SSL_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})


def common_config(settings: Settings | None = None) -> dict[str, Any]:
    """bootstrap.servers plus the security settings; shared by every client."""
    settings = settings or get_settings()
    config: dict[str, Any] = {
        "bootstrap.servers": kafka_bootstrap(settings),
        "security.protocol": settings.kafka_security_protocol,
    }
    config.update(_security_config(settings))
    return config


def producer_config(
    settings: Settings | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An acks=all producer whose retries never reorder a partition's messages: idempotent on a
    real Kafka (no duplicates either); on the embedded broker one request in flight instead (see the
    module docstring: Tansu's restarts forget producer ids)."""
    settings = settings or get_settings()
    config = common_config(settings)
    config["acks"] = "all"
    if is_embedded("kafka", settings):
        config.update({"enable.idempotence": False, "max.in.flight.requests.per.connection": 1})
    else:
        config["enable.idempotence"] = True
    return _finish(config, overrides, "producer")


def consumer_config(
    group_id: str, settings: Settings | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A group consumer whose offsets the caller commits explicitly (commit(offsets=...))."""
    if not group_id:
        raise ValueError("consumer_config: group_id must be a non-empty string")
    settings = settings or get_settings()
    config = common_config(settings)
    config.update(
        {
            "group.id": group_id,
            # Tansu reports a wrong high watermark, so "latest" would replay part of the last batch;
            # a fresh group starts from the beginning and resumes from committed offsets after that.
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "queued.min.messages": CONSUMER_PREFETCH_MESSAGES,
            "queued.max.messages.kbytes": CONSUMER_PREFETCH_KBYTES,
            "fetch.max.bytes": CONSUMER_FETCH_MAX_BYTES,
            "fetch.queue.backoff.ms": CONSUMER_FETCH_QUEUE_BACKOFF_MS,
        }
    )
    if is_embedded("kafka", settings):
        config.update(
            {
                "session.timeout.ms": EMBEDDED_SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": EMBEDDED_HEARTBEAT_INTERVAL_MS,
                "fetch.wait.max.ms": EMBEDDED_FETCH_WAIT_MAX_MS,
            }
        )
    return _finish(config, overrides, "consumer")


def admin_config(
    settings: Settings | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return _finish(common_config(settings), overrides, "admin")


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to log or print: secret values replaced by ***."""
    return {key: ("***" if key in SECRET_KEYS and value else value) for key, value in config.items()}


def _security_config(settings: Settings) -> dict[str, Any]:
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {}
    sasl_fields = {
        "kafka_sasl_mechanism": settings.kafka_sasl_mechanism,
        "kafka_sasl_username": settings.kafka_sasl_username,
        "kafka_sasl_password": settings.kafka_sasl_password,
    }
    if protocol in _SASL_PROTOCOLS:
        absent = [name for name, value in sasl_fields.items() if not value]
        if absent:
            raise ValueError(f"kafka_security_protocol={protocol} needs {', '.join(absent)} to be set")
        assert settings.kafka_sasl_password is not None
        config.update(
            {
                "sasl.mechanism": settings.kafka_sasl_mechanism,
                "sasl.username": settings.kafka_sasl_username,
                "sasl.password": settings.kafka_sasl_password.get_secret_value(),
            }
        )
    else:
        stray = [name for name, value in sasl_fields.items() if value]
        if stray:
            raise ValueError(
                f"{', '.join(stray)} set but kafka_security_protocol={protocol} does not use SASL; "
                "use SASL_PLAINTEXT or SASL_SSL"
            )
    if settings.kafka_ssl_ca_location:
        if protocol not in _SSL_PROTOCOLS:
            raise ValueError(
                f"kafka_ssl_ca_location set but kafka_security_protocol={protocol} does not use TLS; "
                "use SSL or SASL_SSL"
            )
        config["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return config


def _finish(config: dict[str, Any], overrides: Mapping[str, Any] | None, role: str) -> dict[str, Any]:
    if overrides:
        config.update(overrides)
    log.debug("kafka %s config: %s", role, redact_config(config))
    return config
