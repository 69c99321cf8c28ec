"""Kafka client configs: bounded consumer prefetch, producers that survive an embedded broker
restart, the restart detector, and that every client in the product is built from these configs."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer, Producer

from steelcore.kafka import client_config
from steelcore.kafka.client_config import consumer_config, producer_config
from steelcore.kafka.clients import BrokerIncarnation
from steelcore.service_urls import write_stack
from steelcore.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("steelcore", "producers", "workers", "dashboard", "stack", "training", "benchmarks")
CONFIG_FACTORIES = {
    "Producer": "producer_config",
    "Consumer": "consumer_config",
    "AdminClient": "admin_config",
}
# The one module that constructs clients, and its reviewed exception: count_brokers probes a
# cluster with the config its caller gives (the embedded broker's launcher probes its own plaintext
# listener on 127.0.0.1 before any settings point at it; bootstrap only).
CLIENTS_MODULE = "steelcore/kafka/clients.py"
CLIENTS_BUILT_ELSEWHERE = {"count_brokers"}


def embedded(tmp_path: Path) -> Settings:
    write_stack(tmp_path, {"kafka": {"url": "127.0.0.1:19092"}})
    return Settings(run_dir=tmp_path, kafka_url=None)


def external(tmp_path: Path) -> Settings:
    return Settings(run_dir=tmp_path, kafka_url="kafka-1:9092")


@pytest.mark.parametrize("where", [embedded, external])
def test_every_consumer_prefetches_a_bounded_amount(tmp_path: Path, where) -> None:
    config = consumer_config("g", where(tmp_path))
    # librdkafka's defaults are 100,000 messages / 64 MB of prefetch per consumer.
    assert config["queued.min.messages"] <= 64
    assert config["queued.max.messages.kbytes"] * 1024 <= 32 * 2**20
    assert config["fetch.max.bytes"] <= 8 * 2**20
    Consumer(config).close()  # librdkafka accepts the combination


def test_frames_larger_than_a_fetch_are_still_allowed(tmp_path: Path) -> None:
    # A single message over fetch.max.bytes is still delivered (the broker returns at least one),
    # so the bound must not be tied to max_frame_bytes; the fault suite sends 1.2 MB frames.
    settings = external(tmp_path)
    assert consumer_config("g", settings)["fetch.max.bytes"] < settings.max_frame_bytes


def test_embedded_producers_are_ordered_without_idempotence(tmp_path: Path) -> None:
    # Tansu forgets producer ids when it restarts; an idempotent producer never recovers from that.
    config = producer_config(embedded(tmp_path))
    assert config["enable.idempotence"] is False
    assert config["max.in.flight.requests.per.connection"] == 1
    assert config["acks"] == "all"
    Producer(config)


def test_producers_of_a_real_kafka_stay_idempotent(tmp_path: Path) -> None:
    config = producer_config(external(tmp_path))
    assert config["enable.idempotence"] is True
    assert "max.in.flight.requests.per.connection" not in config


class FakeClient:
    def __init__(self, *cluster_ids: str) -> None:
        self.ids = list(cluster_ids)

    def list_topics(self, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(cluster_id=self.ids.pop(0))


def test_a_new_cluster_id_reports_a_new_broker_incarnation(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient("steel-aaa", "steel-aaa", "steel-bbb", "steel-bbb")
    incarnation = BrokerIncarnation()
    assert [incarnation.changed(client) for _ in range(4)] == [False, False, True, False]
    assert incarnation.cluster_id == "steel-bbb"
    assert "new incarnation" in caplog.text and "steel-aaa" in caplog.text


def test_each_embedded_broker_start_gets_its_own_cluster_id(tmp_path: Path) -> None:
    from stack.kafka_broker import KafkaBroker

    broker = KafkaBroker(tmp_path, 19092)
    ids = set()
    for _ in range(3):
        command = broker.command()
        ids.add(command[command.index("--cluster-id") + 1])
    assert len(ids) == 3


def _client_constructions() -> list[tuple[str, str, str, ast.Call]]:
    """(file, innermost enclosing function or "", client class, call) of every client construction."""
    found = []
    for package in PRODUCT_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            enclosing: dict[ast.AST, str] = {}
            for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
                for inner in ast.walk(func):
                    enclosing[inner] = func.name  # ast.walk is breadth-first: inner functions win
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                    name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                    if name in CONFIG_FACTORIES:
                        where = str(path.relative_to(REPO_ROOT))
                        found.append((where, enclosing.get(node, ""), name, node))
    return found


def test_every_kafka_client_is_built_in_the_kafka_package_from_its_config() -> None:
    """So the security settings (SASL/TLS) and the bounds reach every producer, consumer and admin."""
    constructions = _client_constructions()
    assert len(constructions) >= 3, "the scan found too few clients; has the code moved?"
    elsewhere = [f"{where}:{call.lineno}" for where, _f, _n, call in constructions if where != CLIENTS_MODULE]
    assert not elsewhere, f"Kafka clients built outside {CLIENTS_MODULE}: {elsewhere}"
    stray = []
    for where, func, name, call in constructions:
        arg = call.args[0] if call.args else None
        made_here = (
            isinstance(arg, ast.Call)
            and isinstance(arg.func, ast.Name | ast.Attribute)
            and (arg.func.id if isinstance(arg.func, ast.Name) else arg.func.attr) == CONFIG_FACTORIES[name]
        )
        if not made_here and func not in CLIENTS_BUILT_ELSEWHERE:
            stray.append(f"{where}:{call.lineno} {name}(...)")
    assert not stray, f"Kafka clients not built from steelcore.kafka.client_config: {stray}"


def test_the_documented_bounds_are_the_ones_applied(tmp_path: Path) -> None:
    config = consumer_config("g", external(tmp_path))
    assert config["queued.min.messages"] == client_config.CONSUMER_PREFETCH_MESSAGES
    assert config["queued.max.messages.kbytes"] == client_config.CONSUMER_PREFETCH_KBYTES
    assert config["fetch.max.bytes"] == client_config.CONSUMER_FETCH_MAX_BYTES
