"""Kafka client configs: the safety defaults, security pass-through, embedded-broker tuning, secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from steelcore.kafka import client_config
from steelcore.kafka.client_config import admin_config, consumer_config, producer_config, redact_config
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.service_urls import write_stack
from steelcore.settings import Settings

PASSWORD = "pa55-w0rd-never-printed"
EMBEDDED_ONLY_KEYS = ("session.timeout.ms", "heartbeat.interval.ms", "fetch.wait.max.ms")


def external(tmp_path: Path, **overrides: object) -> Settings:
    fields: dict[str, object] = {"run_dir": tmp_path, "kafka_url": "kafka-1:9092,kafka-2:9092"}
    fields.update(overrides)
    return Settings(**fields)


def sasl(tmp_path: Path, protocol: str = "SASL_SSL", **overrides: object) -> Settings:
    fields: dict[str, object] = {
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "steel",
        "kafka_sasl_password": SecretStr(PASSWORD),
    }
    fields.update(overrides)
    return external(tmp_path, **fields)


def test_producer_is_idempotent_with_acks_all(tmp_path: Path) -> None:
    config = producer_config(external(tmp_path))
    assert config["bootstrap.servers"] == "kafka-1:9092,kafka-2:9092"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["security.protocol"] == "PLAINTEXT"


def test_consumer_stores_and_commits_offsets_explicitly(tmp_path: Path) -> None:
    config = consumer_config("steel-workers", external(tmp_path))
    assert config["group.id"] == "steel-workers"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest"


def test_real_kafka_keeps_librdkafka_timing_defaults(tmp_path: Path) -> None:
    config = consumer_config("g", external(tmp_path))
    assert not set(EMBEDDED_ONLY_KEYS) & set(config)


def test_embedded_broker_gets_the_join_and_latency_workarounds(tmp_path: Path) -> None:
    write_stack(tmp_path, {"kafka": {"url": "127.0.0.1:19092"}})
    settings = Settings(run_dir=tmp_path, kafka_url=None)
    config = consumer_config("g", settings)
    assert config["bootstrap.servers"] == "127.0.0.1:19092"
    # Tansu makes every join wait session.timeout.ms / 2: it must be short, the heartbeat well inside it.
    assert config["session.timeout.ms"] <= 10_000
    assert 3 * config["heartbeat.interval.ms"] <= config["session.timeout.ms"]
    assert config["fetch.wait.max.ms"] <= 50
    assert "session.timeout.ms" not in producer_config(settings)


def test_security_settings_reach_every_client(tmp_path: Path) -> None:
    settings = sasl(tmp_path, kafka_ssl_ca_location="/etc/ssl/ca.pem")
    for config in (producer_config(settings), consumer_config("g", settings), admin_config(settings)):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == "steel"
        assert config["sasl.password"] == PASSWORD
        assert config["ssl.ca.location"] == "/etc/ssl/ca.pem"


def test_plaintext_config_carries_no_security_keys(tmp_path: Path) -> None:
    config = admin_config(external(tmp_path))
    assert not [key for key in config if key.startswith(("sasl.", "ssl."))]


def test_password_never_printed_or_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = sasl(tmp_path)
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.kafka_sasl_password)
    with caplog.at_level(logging.DEBUG, logger=client_config.__name__):
        config = producer_config(settings)
        consumer_config("g", settings)
        admin_config(settings)
    assert caplog.records, "the configs are logged at DEBUG (redacted)"
    assert PASSWORD not in caplog.text
    redacted = redact_config(config)
    assert redacted["sasl.password"] == "***"
    assert PASSWORD not in repr(redacted)
    assert config["sasl.password"] == PASSWORD, "redact_config must not change the original"


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"kafka_sasl_password": None}, "kafka_sasl_password"),
        (
            {"kafka_sasl_username": None, "kafka_sasl_mechanism": None},
            "kafka_sasl_mechanism, kafka_sasl_username",
        ),
    ],
)
def test_sasl_protocol_without_credentials_is_rejected(
    tmp_path: Path, overrides: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        producer_config(sasl(tmp_path, **overrides))


def test_sasl_credentials_without_sasl_protocol_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not use SASL"):
        admin_config(sasl(tmp_path, protocol="SSL"))


def test_ca_without_tls_protocol_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not use TLS"):
        admin_config(external(tmp_path, kafka_ssl_ca_location="/etc/ssl/ca.pem"))


def test_empty_group_id_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="group_id"):
        consumer_config("", external(tmp_path))


def test_overrides_win(tmp_path: Path) -> None:
    config = producer_config(external(tmp_path), overrides={"message.max.bytes": 8_000_000, "linger.ms": 0})
    assert config["message.max.bytes"] == 8_000_000
    assert config["linger.ms"] == 0
    assert config["enable.idempotence"] is True


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_librdkafka_accepts_every_generated_config(tmp_path: Path, protocol: str) -> None:
    # librdkafka validates property names and values when a client is built (no connection needed).
    settings = (
        external(tmp_path)
        if protocol == "PLAINTEXT"
        else sasl(tmp_path, protocol, kafka_sasl_mechanism="PLAIN")
    )
    Producer(producer_config(settings))
    consumer = Consumer(consumer_config("g", settings))
    consumer.close()
    AdminClient(admin_config(settings))


@pytest.mark.parametrize(
    ("names", "partitions", "problem"),
    [([], 1, "non-empty"), (["ok", ""], 1, "non-empty"), (["ok"], 0, "partitions")],
)
def test_ensure_topics_rejects_bad_arguments(names: list[str], partitions: int, problem: str) -> None:
    admin = AdminClient({"bootstrap.servers": "127.0.0.1:1"})
    with pytest.raises(ValueError, match=problem):
        ensure_topics(admin, names, partitions)
