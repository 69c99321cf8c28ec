"""`steel up` / `steel status` / `steel down` against the real embedded services.

The stack is started through the console script in a subprocess, so these tests also prove the
services outlive the process that started them and can be stopped from another one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from stack.embedded_stack import EmbeddedStack
from stack.service import free_port, port_accepts
from steelcore import exit_codes
from steelcore.kafka.client_config import admin_config, consumer_config, producer_config
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.service_urls import postgres_dsn, read_stack, redis_url, resolve_url, stack_file
from steelcore.settings import Settings

pytestmark = pytest.mark.integration

CORE = {"kafka", "postgres", "redis"}


def steel(args: list[str], env: dict[str, str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steelcore.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture()
def cli_env(fresh_run_dir: Path) -> Iterator[dict[str, str]]:
    """Environment for `steel` with a private run dir and random ports; `steel down` afterwards."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STEEL_")}
    env.update(
        STEEL_RUN_DIR=str(fresh_run_dir),
        STEEL_KAFKA_PORT=str(free_port()),
        STEEL_POSTGRES_PORT=str(free_port()),
        STEEL_REDIS_PORT=str(free_port()),
    )
    yield env
    steel(["down"], env)


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(run_dir=Path(env["STEEL_RUN_DIR"]), kafka_url=None, postgres_url=None, redis_url=None)


def check_kafka_round_trip(settings: Settings) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    topic = f"steel.test.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(admin_config(settings))
    assert ensure_topics(admin, [topic], partitions=2) == [topic]
    assert ensure_topics(admin, [topic], partitions=2) == [], "a second call must create nothing"
    assert len(admin.list_topics(topic, timeout=5).topics[topic].partitions) == 2

    producer = Producer(producer_config(settings))
    producer.produce(topic, key=b"frame-0001", value=b"\x89PNG payload")
    assert producer.flush(10) == 0

    consumer = Consumer(consumer_config(f"test-{uuid.uuid4().hex[:8]}", settings))
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        message = None
        while message is None and time.monotonic() < deadline:
            polled = consumer.poll(0.5)
            if polled is not None and polled.error() is None:
                message = polled
        assert message is not None, "nothing consumed within 60 s"
        assert (message.key(), message.value()) == (b"frame-0001", b"\x89PNG payload")
        consumer.store_offsets(message)
        consumer.commit(asynchronous=False)
        [committed] = consumer.committed([TopicPartition(topic, message.partition())], timeout=10)
        assert committed.offset == message.offset() + 1
    finally:
        consumer.close()


def check_postgres(settings: Settings) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn(settings), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def check_redis(settings: Settings) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = redis_url(settings)
    client = redis.Redis.from_url(url)
    try:
        assert client.ping() is True
        stream = f"steel:test:{uuid.uuid4().hex[:8]}"
        entry_id = client.xadd(stream, {"frame_id": "frame-0001", "class_id": "3"})
        [(read_id, fields)] = client.xrange(stream)
        assert read_id == entry_id
        assert fields == {b"frame_id": b"frame-0001", b"class_id": b"3"}
    finally:
        client.close()
    host, port = (
        client.connection_pool.connection_kwargs["host"],
        client.connection_pool.connection_kwargs["port"],
    )
    for password in (None, "wrong-password"):
        # No retries: redis-py would retry the refused authentication with backoff for seconds.
        stranger = redis.Redis(host=host, port=port, password=password, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            stranger.ping()
        stranger.close()


def test_up_serves_clients_then_down_stops_everything(cli_env: dict[str, str]) -> None:
    run_dir = Path(cli_env["STEEL_RUN_DIR"])
    up = steel(["up", "--no-triton", "--json"], cli_env)
    assert up.returncode == exit_codes.OK, up.stderr
    report = json.loads(up.stdout)
    assert set(report["started"]) == CORE
    assert {h["name"] for h in report["services"] if h["up"]} == CORE

    # The `steel up` process has exited; its services must still run, each in its own session.
    recorded = read_stack(run_dir)
    assert set(recorded) == CORE
    pids = {name: int(rec["pid"]) for name, rec in recorded.items()}
    assert all(running(pid) for pid in pids.values()), pids
    assert all(os.getsid(pid) != os.getsid(0) for pid in pids.values())

    password = (run_dir / "redis" / "password").read_text().strip()
    assert password and password not in up.stdout + up.stderr
    for private in (stack_file(run_dir), run_dir / "redis" / "password", run_dir / "redis" / "redis.conf"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private

    status = steel(["status", "--json"], cli_env)
    assert status.returncode == exit_codes.OK, status.stdout
    assert password not in status.stdout
    assert {h["name"] for h in json.loads(status.stdout)["services"] if h["up"]} == CORE

    settings = settings_of(cli_env)
    check_kafka_round_trip(settings)
    check_postgres(settings)
    check_redis(settings)

    down = steel(["down"], cli_env)
    assert down.returncode == exit_codes.OK, down.stderr
    assert "stopped: redis, postgres, kafka" in down.stdout
    assert not [name for name, pid in pids.items() if running(pid)]
    ports = [int(cli_env[f"STEEL_{name.upper()}_PORT"]) for name in CORE]
    assert not [port for port in ports if port_accepts("127.0.0.1", port)]
    assert not stack_file(run_dir).exists()
    assert steel(["status"], cli_env).returncode == exit_codes.UNAVAILABLE


def test_failed_up_names_the_log_and_rolls_back(cli_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(cli_env["STEEL_KAFKA_PORT"])))
        squatter.listen()
        up = steel(["up", "--no-triton"], cli_env)
    assert up.returncode == exit_codes.UNAVAILABLE
    run_dir = Path(cli_env["STEEL_RUN_DIR"]).resolve()
    assert "kafka failed to start" in up.stderr
    assert str(run_dir / "kafka" / "service.log") in up.stderr
    assert not stack_file(run_dir).exists()
    health = EmbeddedStack(settings_of(cli_env)).status()
    assert not [h.name for h in health if h.up or h.pid is not None], "a failed up must stop what it started"


def test_external_services_are_checked_not_started(
    kafka_url: str, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    settings = Settings(run_dir=run_dir, kafka_url=kafka_url, postgres_url=postgres_url, redis_url=redis_url)
    report = EmbeddedStack(settings, include_triton=False).up(timeout_s=30)
    assert report.ok, report.health
    assert report.started == [] and report.adopted == []
    assert {h.name for h in report.health if h.up and not h.embedded} == CORE
    assert not [p.name for p in run_dir.iterdir() if p.is_dir()], "nothing may be started for external URLs"

    dead = f"redis://127.0.0.1:{free_port()}/0"
    report = EmbeddedStack(settings.model_copy(update={"redis_url": dead}), include_triton=False).up(
        timeout_s=30
    )
    assert not report.ok
    [redis_health] = [h for h in report.health if h.name == "redis"]
    assert not redis_health.up and not redis_health.embedded and redis_health.detail


ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "IN", data_type: TYPE_UINT8, dims: [ -1 ] } ]
output [ { name: "OUT", data_type: TYPE_UINT8, dims: [ -1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
ECHO_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]
            )
            for r in requests
        ]
"""


def test_up_includes_triton_and_down_stops_its_stubs(cli_env: dict[str, str], tmp_path: Path) -> None:
    # A one-file python-backend model keeps this about the stack, not about the shipped models.
    repository = tmp_path / "repository"
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repository / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    cli_env.update(
        STEEL_TRITON_REPOSITORY=str(repository),
        STEEL_TRITON_MODEL="echo",
        STEEL_TRITON_HTTP_PORT=str(free_port()),
        STEEL_TRITON_GRPC_PORT=str(free_port()),
        STEEL_TRITON_METRICS_PORT=str(free_port()),
    )
    up = steel(["up", "--json"], cli_env)
    assert up.returncode == exit_codes.OK, up.stderr
    assert set(json.loads(up.stdout)["started"]) == {*CORE, "triton"}

    run_dir = Path(cli_env["STEEL_RUN_DIR"])
    record = read_stack(run_dir)["triton"]
    assert record["grpc_url"] == f"127.0.0.1:{cli_env['STEEL_TRITON_GRPC_PORT']}"
    settings = settings_of(cli_env).model_copy(update={"triton_url": None, "triton_protocol": "http"})
    assert resolve_url("triton", settings) == f"127.0.0.1:{cli_env['STEEL_TRITON_HTTP_PORT']}"
    server = psutil.Process(int(record["pid"]))
    family = [server.pid, *(child.pid for child in server.children(recursive=True))]
    assert len(family) >= 2, "the python backend stub runs as a child of tritonserver"

    status = steel(["status", "--json"], cli_env)
    assert status.returncode == exit_codes.OK, status.stdout
    [triton] = [h for h in json.loads(status.stdout)["services"] if h["name"] == "triton"]
    assert triton["up"] and triton["version"].startswith("Triton")

    assert steel(["down"], cli_env).returncode == exit_codes.OK
    assert not [pid for pid in family if running(pid)]


def test_crashed_service_shows_down_and_down_cleans_its_pidfile(cli_env: dict[str, str]) -> None:
    assert steel(["up", "--no-triton"], cli_env).returncode == exit_codes.OK
    again = steel(["up", "--no-triton", "--json"], cli_env)
    assert again.returncode == exit_codes.OK, again.stderr
    assert set(json.loads(again.stdout)["adopted"]) == CORE, "a second up adopts the running services"

    run_dir = Path(cli_env["STEEL_RUN_DIR"])
    redis_pid = int(read_stack(run_dir)["redis"]["pid"])
    os.kill(redis_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(redis_pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    status = steel(["status", "--json"], cli_env)
    assert status.returncode == exit_codes.UNAVAILABLE
    assert json.loads(status.stdout)["down"] == ["redis"]

    down = steel(["down"], cli_env)
    assert down.returncode == exit_codes.OK
    assert "removed stale pidfiles of: redis" in down.stdout
    assert "stopped: postgres, kafka" in down.stdout
    assert not (run_dir / "redis" / "service.pid").exists()
