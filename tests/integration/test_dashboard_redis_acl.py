"""The dashboard's Redis user on the real embedded Redis: what the health page calls works, and
nothing else does (no writes, no other key, no pub/sub, no administration)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr

from dashboard.service_health import alarm_backlog, service_status
from stack.redis_server import RedisServer
from steelcore.redis.connection import DASHBOARD_REDIS_USER, dashboard_redis_url, probe_url
from steelcore.settings import Settings

pytestmark = pytest.mark.integration

STREAM = "steel:alarms"  # the default alarm stream, which the embedded server's ACL names
GROUP = "steel-actuators"


@pytest.fixture()
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.delete(STREAM, "steel:other")
    client.xadd(STREAM, {"alarm_id": "f1:1"})
    client.xadd(STREAM, {"alarm_id": "f2:3"})
    client.xgroup_create(STREAM, GROUP, id="0")
    client.xreadgroup(GROUP, "actuator-1", {STREAM: ">"}, count=1)  # one delivered, not acknowledged
    client.set("steel:other", "secret")
    yield client
    client.delete(STREAM, "steel:other")
    client.close()


@pytest.fixture()
def dashboard(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.dashboard_url)
    yield client
    client.close()


def test_the_dashboard_user_reads_the_backlog_as_the_health_page_does(
    admin: redis.Redis, dashboard: redis.Redis, redis_server: RedisServer, stack_settings: Settings
) -> None:
    assert dashboard.ping()
    assert dashboard.xlen(STREAM) == 2
    assert dashboard.xpending(STREAM, GROUP)["pending"] == 1
    # The page's own calls, with the URL it resolves from stack.json: the dashboard user's.
    url = dashboard_redis_url(stack_settings)
    assert url == redis_server.dashboard_url and f"//{DASHBOARD_REDIS_USER}:" in url
    backlog = alarm_backlog(stack_settings)
    assert (backlog.length, backlog.pending, backlog.error) == (2, 1, None)
    assert probe_url(url) == "Redis"  # PING answers; INFO (the version) is not granted
    # Set explicitly (as deploy/ does), the same user probes Redis on the status table.
    explicit = stack_settings.model_copy(update={"dashboard_redis_url": SecretStr(url)})
    redis_health = next(h for h in service_status(explicit) if h.name == "redis")
    assert redis_health.up, redis_health.detail
    assert redis_server.dashboard_password() not in (redis_health.url or "")


@pytest.mark.parametrize(
    "command",
    [
        ("XADD", STREAM, "*", "alarm_id", "forged:1"),
        ("XACK", STREAM, GROUP, "0-1"),
        ("XTRIM", STREAM, "MAXLEN", "0"),
        ("XGROUP", "DESTROY", STREAM, GROUP),
        ("XRANGE", STREAM, "-", "+"),  # the entries themselves: the page needs only counts
        ("XREADGROUP", "GROUP", GROUP, "dashboard", "STREAMS", STREAM, ">"),
        ("DEL", STREAM),
        ("GET", "steel:other"),
        ("XLEN", "steel:other"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("PUBLISH", "steel:alarms:live", "forged"),
        ("CONFIG", "GET", "requirepass"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", DASHBOARD_REDIS_USER, "+@all"),
        ("INFO",),
        ("SHUTDOWN",),
    ],
)
def test_the_dashboard_user_can_do_nothing_else(
    admin: redis.Redis, dashboard: redis.Redis, command: tuple[str, ...]
) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        dashboard.execute_command(*command)
    assert admin.xlen(STREAM) == 2 and admin.get("steel:other") == b"secret"


def test_the_dashboard_user_cannot_subscribe(admin: redis.Redis, dashboard: redis.Redis) -> None:
    pubsub = dashboard.pubsub()
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            pubsub.subscribe("steel:alarms:live")
            pubsub.get_message(timeout=2.0)
    finally:
        pubsub.close()


def test_the_config_file_holds_only_a_hash_of_the_dashboard_password(redis_server: RedisServer) -> None:
    text = redis_server.config_file.read_text()
    assert f"user {DASHBOARD_REDIS_USER} " in text
    assert redis_server.dashboard_password() not in text
    assert (redis_server.service_dir / "dashboard_password").stat().st_mode & 0o777 == 0o600


def test_the_dashboard_user_reads_the_inspection_alarms_for_the_live_page(
    admin: redis.Redis, redis_server: RedisServer, stack_settings: Settings
) -> None:
    from dashboard.inspection_feed import read_feed
    from steelcore.redis.inspection_alarms import InspectionAlarms
    from workers.drift_monitor import DriftEvent

    stream = stack_settings.inspection_alarm_stream  # the embedded server's ACL names the default
    admin.delete(stream, f"{stream}:active")
    alarms = InspectionAlarms(admin, stream)
    try:
        alarms.publish(
            DriftEvent("L1/cam1", "raised", ("brightness",), "camera L1/cam1: 40 gray levels darker")
        )
        alarms.publish(DriftEvent("L2/cam1", "raised", ("texture",), "camera L2/cam1: blurrier"))
        alarms.publish(DriftEvent("L2/cam1", "cleared", ("texture",), "camera L2/cam1: back"))
        feed = read_feed(stack_settings)
        assert feed.error is None and list(feed.active) == ["L1/cam1"]
        assert "darker" in feed.active["L1/cam1"]["message"] and len(feed.recent) == 3
        assert list(read_feed(stack_settings, line_id="L2").active) == []
        dashboard = redis.Redis.from_url(redis_server.dashboard_url)
        with pytest.raises(redis.exceptions.NoPermissionError):  # read only, even on its own keys
            dashboard.xadd(stream, {"camera": "forged"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            dashboard.hgetall(f"{stream}:active")
        dashboard.close()
    finally:
        admin.delete(stream, f"{stream}:active")
