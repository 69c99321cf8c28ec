"""Inspection alarms for the live page: which cameras are in a drift episode now, and the latest
raises and clears, read from their Redis stream (steelcore/redis/inspection_alarms.py) as the
dashboard's own Redis user (XREVRANGE only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dashboard.service_health import PROBE_TIMEOUT_S
from steelcore.settings import Settings

FEED_ENTRIES = 200  # newest entries read per refresh; an episode older than this many is long over


@dataclass(frozen=True)
class InspectionFeed:
    active: dict[str, dict[str, str]] = field(default_factory=dict)  # camera -> its raising entry
    recent: list[dict[str, str]] = field(default_factory=list)  # newest first
    error: str | None = None


def episodes(entries: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """Cameras whose newest entry (of ``entries``, newest first) is a raise."""
    newest: dict[str, dict[str, str]] = {}
    for entry in entries:
        newest.setdefault(entry.get("camera", "?"), entry)
    return {camera: entry for camera, entry in newest.items() if entry.get("state") == "raised"}


def read_feed(settings: Settings, line_id: str | None = None, count: int = FEED_ENTRIES) -> InspectionFeed:
    from steelcore.redis.connection import dashboard_redis
    from steelcore.redis.exceptions import RedisError
    from steelcore.redis.inspection_alarms import recent_entries
    from steelcore.service_urls import ServiceUnavailableError

    try:
        client = dashboard_redis(settings, PROBE_TIMEOUT_S)
    except ServiceUnavailableError as exc:
        return InspectionFeed(error=str(exc))
    try:
        entries = recent_entries(client, settings.inspection_alarm_stream, count)
    except RedisError as exc:
        return InspectionFeed(error=f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
    if line_id is not None:
        entries = [e for e in entries if e.get("camera", "").split("/", 1)[0] == line_id]
    return InspectionFeed(episodes(entries), entries)
