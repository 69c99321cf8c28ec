"""Redis clients: the workers' and actuators' (Redis's default user) and the dashboard's own ACL user.

The dashboard's user may make the few reads below on the two alarm streams and nothing else: the
embedded server (stack/redis_server.py) and deploy/ both create it from ``dashboard_acl_rules``.
"""

from __future__ import annotations

import re
from typing import Any

import redis

from steelcore.redis.alarm_stream import AlarmStream
from steelcore.redis.exceptions import RedisUnavailableError
from steelcore.service_urls import ServiceUnavailableError, read_stack, redis_url, stack_file
from steelcore.settings import Settings, reveal

# The client type, for annotations and isinstance checks outside the package.
Client = redis.Redis
# The dashboard's ACL user, created by the embedded Redis and by deploy/ (compose, k8s).
DASHBOARD_REDIS_USER = "steel-dashboard"
# What the dashboard calls: alarm_stream.stream_backlog (XLEN, XPENDING summary), the status probe
# (PING; INFO is not granted, the probe then shows no version) and the live page's inspection
# alarms (inspection_alarms.recent_entries, XREVRANGE). Redis 6 grants commands for every key of the
# user, so XREVRANGE also reads the defect alarm stream: read only, and the same alarms the page
# reads from the database.
DASHBOARD_REDIS_COMMANDS = ("ping", "xlen", "xpending", "xrevrange")


def dashboard_acl_rules(alarm_stream: str, inspection_stream: str) -> str:
    """ACL rules (after the user name and password) of the dashboard's Redis user."""
    # The streams' names, not patterns: glob characters in a name are escaped.
    keys = " ".join("~" + re.sub(r"([*?\[\]\\])", r"\\\1", k) for k in (alarm_stream, inspection_stream))
    commands = " ".join(f"+{c}" for c in DASHBOARD_REDIS_COMMANDS)
    return f"resetkeys {keys} resetchannels -@all {commands}"


def client_from_url(url: str, **options: Any) -> redis.Redis:
    """A client for ``url``; ``options`` are redis-py's (socket_timeout, decode_responses, ...)."""
    return redis.Redis.from_url(url, **options)


def redis_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client as Redis's default user, at the URL settings (or the embedded stack) name."""
    return client_from_url(redis_url(settings), **options)


def check_reachable(client: redis.Redis) -> None:
    """PING; RedisUnavailableError when Redis does not answer."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailableError(f"cannot reach Redis: {exc}") from exc


def alarm_stream_from_settings(settings: Settings) -> AlarmStream:
    client = client_from_url(redis_url(settings), socket_timeout=5, health_check_interval=10)
    return AlarmStream(
        client,
        settings.alarm_stream,
        settings.alarm_channel,
        settings.alarm_stream_maxlen,
        settings.alarm_stream_max_age_s,
    )


def dashboard_redis_url(settings: Settings) -> str:
    """The Redis URL the dashboard uses: its own ACL user's (dashboard_redis_url, or the embedded
    server's dashboard user), else STEEL_REDIS_URL. Raises ServiceUnavailableError."""
    for value in (settings.dashboard_redis_url, settings.redis_url):
        url = reveal(value)
        if url and url.strip():
            return url.strip()
    url = read_stack(settings.run_dir).get("redis", {}).get("dashboard_url")
    if not isinstance(url, str) or not url:
        raise ServiceUnavailableError(
            f"no Redis URL for the dashboard: STEEL_DASHBOARD_REDIS_URL and STEEL_REDIS_URL are unset and "
            f"{stack_file(settings.run_dir)} records no embedded Redis with a {DASHBOARD_REDIS_USER} user; "
            "run `steel up` (after `steel down` when it predates that user)"
        )
    return url


def dashboard_redis(settings: Settings, timeout_s: float) -> redis.Redis:
    """A client as the dashboard's Redis user, every socket operation bounded by ``timeout_s``.
    Raises ServiceUnavailableError when no Redis is known."""
    return client_from_url(
        dashboard_redis_url(settings), socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


def probe_url(url: str, timeout_s: float = 2.0) -> str:
    """PING the server at url (password included) and return its version; raises redis.RedisError."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # redis-py retries connection and authentication errors with backoff (seconds); a probe answers now.
    client = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
        try:
            info = client.info("server")
        except redis.exceptions.NoPermissionError:  # a user allowed PING only (the dashboard's)
            return "Redis"
    finally:
        client.close()
    return f"Redis {info.get('redis_version', '?')}"
