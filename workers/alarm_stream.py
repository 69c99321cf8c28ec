"""Redis side of alarms: the durable stream actuators consume, and the live pub/sub feed.

The stream (XADD with an approximate MAXLEN cap) is what reject actuators read in a
consumer group, so an alarm survives an actuator restart; pub/sub is only the
dashboard's live feed, where a missed message costs nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from workers.alarm_rules import Alarm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    alarm: Alarm | None  # None: the entry was malformed; acknowledge it so it is not reclaimed forever
    raw: dict[str, str]


class AlarmStream:
    def __init__(self, client: redis.Redis, stream: str, channel: str, maxlen: int) -> None:
        self.client = client
        self.stream = stream
        self.channel = channel
        self.maxlen = maxlen

    # --- producer side (workers) -----------------------------------------------------
    def publish(self, alarms: Sequence[Alarm]) -> list[str]:
        """XADD every alarm and announce it; one round trip. Raises redis.RedisError on outage."""
        if not alarms:
            return []
        pipe = self.client.pipeline(transaction=False)
        for alarm in alarms:
            pipe.xadd(self.stream, alarm.to_fields(), maxlen=self.maxlen, approximate=True)
        for alarm in alarms:
            pipe.publish(self.channel, json.dumps(alarm.to_fields()))
        replies = pipe.execute()
        return [_text(entry_id) for entry_id in replies[: len(alarms)]]

    # --- consumer side (actuators) ----------------------------------------------------
    def ensure_group(self, group: str) -> None:
        try:
            self.client.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, group: str, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        reply = self.client.xreadgroup(group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return [entry for _, entries in reply or [] for entry in _entries(entries)]

    def reclaim(self, group: str, consumer: str, min_idle_ms: int, count: int = 100) -> list[StreamEntry]:
        """Take over entries another consumer read but never acknowledged (it died)."""
        reply = self.client.xautoclaim(self.stream, group, consumer, min_idle_ms, start_id="0-0", count=count)
        return list(_entries(reply[1]))

    def ack(self, group: str, entry_ids: Sequence[str]) -> int:
        return int(self.client.xack(self.stream, group, *entry_ids)) if entry_ids else 0

    def pending_count(self, group: str) -> int:
        try:
            return int(self.client.xpending(self.stream, group)["pending"])
        except redis.ResponseError:
            return 0


def _entries(raw: Sequence) -> list[StreamEntry]:
    out = []
    for entry_id, fields in raw:
        if not fields:  # an entry trimmed by MAXLEN while pending comes back empty
            continue
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        try:
            alarm: Alarm | None = Alarm.from_fields(decoded)
        except (KeyError, ValueError) as exc:
            log.error("alarm entry %s is malformed (%s): %s", _text(entry_id), exc, decoded)
            alarm = None
        out.append(StreamEntry(_text(entry_id), alarm, decoded))
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
