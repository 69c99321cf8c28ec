"""Inspection alarms on Redis: a camera's drift episode, published once however many workers see it.

Frames are keyed by camera, so one worker judges a camera at a time; after a rebalance another
worker takes it over with an empty window and may find the same drift again, or see the camera
back to normal and end an episode it did not raise (workers/drift_watch.py reconciles). The
episodes in progress live in one Redis hash, a field per camera; a Lua script sets the camera's
field and appends the stream entry in one atomic step, so a second raise of a running episode adds
nothing, and a worker dying between the two steps cannot leave an episode unpublished. The stream
is apart from the defect alarms: no reject actuator reads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

import redis

from steelcore.redis.entries import newest_entries, text


class EpisodeEvent(Protocol):
    """What the package needs of a drift event (workers.drift_monitor.DriftEvent)."""

    @property
    def camera(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def statistics(self) -> Sequence[str]: ...
    @property
    def message(self) -> str: ...


# KEYS[1] episodes hash, KEYS[2] stream; ARGV[1] "raised"|"cleared", ARGV[2] camera, ARGV[3]
# episode JSON, ARGV[4] stream maxlen, then field/value pairs for XADD. Returns the entry id or false.
_PUBLISH = """
if ARGV[1] == 'raised' then
  if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then return false end
else
  if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return false end
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
"""
# Inspection alarms are rare (an episode lasts minutes); this keeps months of them.
STREAM_MAXLEN = 10_000


class InspectionAlarms:
    def __init__(self, client: redis.Redis, stream: str, *, maxlen: int = STREAM_MAXLEN) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self._script = client.register_script(_PUBLISH)

    @property
    def episodes_key(self) -> str:
        return active_key(self.stream)

    def publish(self, event: EpisodeEvent, *, model: str = "") -> str | None:
        """Appends the event unless another worker already did for this episode; the entry id or
        None when there was nothing to add."""
        now = time.time()
        episode = json.dumps({"statistics": list(event.statistics), "message": event.message, "since": now})
        fields: dict[str, Any] = {
            "kind": "inspection",
            "state": event.state,
            "camera": event.camera,
            "statistics": ",".join(event.statistics),
            "message": event.message,
            "model": model,
            "raised_at": f"{now:.3f}",
        }
        flat = [str(x) for pair in fields.items() for x in pair]
        entry = self._script(
            keys=[self.episodes_key, self.stream],
            args=[event.state, event.camera, episode, self.maxlen, *flat],
        )
        return entry.decode() if isinstance(entry, bytes) else entry

    def active(self) -> dict[str, dict[str, Any]]:
        """The cameras in a drift episode now: camera -> {statistics, message, since}."""
        return {text(k): json.loads(v) for k, v in self.client.hgetall(self.episodes_key).items()}

    def recent(self, count: int = 50) -> list[dict[str, str]]:
        """The newest entries of the stream, newest first."""
        return recent_entries(self.client, self.stream, count)


def recent_entries(client: redis.Redis, stream: str, count: int) -> list[dict[str, str]]:
    """The newest ``count`` entries of an inspection-alarm stream, newest first, each with its "id".
    XREVRANGE only, so the dashboard's ACL user can read them."""
    return [{"id": entry_id, **fields} for entry_id, fields in newest_entries(client, stream, count)]


def active_key(stream: str) -> str:
    """The hash of the episodes in progress, beside the stream (the dashboard's ACL names both)."""
    return f"{stream}:active"
