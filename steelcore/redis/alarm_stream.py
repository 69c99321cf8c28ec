"""Redis side of alarms: the durable stream actuators consume, and the live pub/sub feed.

The stream is what reject actuators read in a consumer group, so an alarm survives an actuator
restart; pub/sub is only the dashboard's live feed, where a missed message costs nothing.

Trimming (``trim``, run by each worker's alarm relay, workers/alarm_relay.py) never removes an
entry a consumer group has not acknowledged: XADD carries no MAXLEN, because Redis would trim by
count whether or not the actuators had read the entries. Instead the stream is cut below the
*acknowledged floor*, the oldest entry some group still owes (its oldest pending entry, else the
first entry after its last-delivered id), and only as far as ``maxlen`` requires. The one
exception is age: an entry older than ``max_age_s`` (a bound far above any actuator outage) is
trimmed acknowledged or not, and ``trim`` reports those as lost. A stream without a consumer
group has acknowledged nothing, so only the age bound trims it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from steelcore.alarm_message import Alarm
from steelcore.redis.entries import decode_entries, decode_fields, text

log = logging.getLogger(__name__)

# Most entries one trim reads to find the count cut (ids come with their fields, ~200 B each);
# a larger backlog of acknowledged entries is cut over the next calls.
TRIM_SCAN_LIMIT = 1000


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    alarm: Alarm | None  # None: the entry was malformed; acknowledge it so it is not reclaimed forever
    raw: dict[str, str]


@dataclass(frozen=True)
class Reclaimed:
    """What one XAUTOCLAIM pass took over, and the pending entries it found deleted."""

    entries: list[StreamEntry]
    deleted: list[str]  # ids of pending entries no longer on the stream (trimmed or XDEL'd)
    cursor: str  # where the next pass starts; "0-0" once the pending list was scanned to its end


@dataclass(frozen=True)
class TrimResult:
    acknowledged: int  # entries every group had acknowledged, trimmed by the count cap or by age
    unacknowledged: int  # entries trimmed by age while some group still owed them: lost alarms
    length: int  # entries left


class AlarmStream:
    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        channel: str,
        maxlen: int,
        max_age_s: float | None = None,
    ) -> None:
        """``maxlen``: entries kept once acknowledged; ``max_age_s``: entries older than this are
        trimmed even unacknowledged (None: never)."""
        self.client = client
        self.stream = stream
        self.channel = channel
        self.maxlen = maxlen
        self.max_age_s = max_age_s

    # --- producer side (workers) -----------------------------------------------------
    def publish(self, alarms: Sequence[Alarm]) -> list[str]:
        """XADD every alarm and announce it; one round trip. Raises redis.RedisError on outage."""
        if not alarms:
            return []
        pipe = self.client.pipeline(transaction=False)
        for alarm in alarms:
            # No MAXLEN: it would trim entries the actuators have not acknowledged (see trim).
            pipe.xadd(self.stream, alarm.to_fields())
        for alarm in alarms:
            pipe.publish(self.channel, json.dumps(alarm.to_fields()))
        replies = pipe.execute()
        return [text(entry_id) for entry_id in replies[: len(alarms)]]

    def acknowledged_floor(self) -> str | None:
        """The lowest entry id some consumer group still owes: entries below it have been delivered
        to and acknowledged by every group. None when the stream has no group (nothing acknowledged).

        XINFO GROUPS and XPENDING are separate reads; acknowledgements only move forward, so a
        floor computed from a slightly older state is lower than the truth, never higher."""
        try:
            groups = self.client.xinfo_groups(self.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        floors = []
        for group in groups:
            floor = _successor(text(group["last-delivered-id"]))
            if int(group["pending"]):
                oldest = self.client.xpending(self.stream, text(group["name"]))["min"]
                if oldest is not None:
                    floor = text(oldest)
            floors.append(floor)
        return min(floors, key=_id_key) if floors else None

    def trim(self, now_s: float | None = None) -> TrimResult:
        """Cut the stream to ``maxlen`` entries without passing the acknowledged floor, then drop
        entries older than ``max_age_s`` whatever their state (counted as unacknowledged)."""
        floor = self.acknowledged_floor()
        acknowledged = 0
        excess = int(self.client.xlen(self.stream)) - self.maxlen
        if excess > 0 and floor is not None:
            # The oldest `excess` entries, but none at or above the floor; cut just after the last.
            oldest = self.client.xrange(self.stream, "-", f"({floor}", count=min(excess, TRIM_SCAN_LIMIT))
            if oldest:
                cut = _successor(text(oldest[-1][0]))
                acknowledged += int(self.client.xtrim(self.stream, minid=cut, approximate=False))
        unacknowledged = 0
        if self.max_age_s is not None:
            now_ms = int((time.time() if now_s is None else now_s) * 1000)
            age_cut = f"{max(0, now_ms - int(self.max_age_s * 1000))}-0"
            if floor is not None:
                below_floor = min(age_cut, floor, key=_id_key)
                acknowledged += int(self.client.xtrim(self.stream, minid=below_floor, approximate=False))
            # Whatever is still below the age cut was owed to some group (or no group existed).
            unacknowledged = int(self.client.xtrim(self.stream, minid=age_cut, approximate=False))
            if unacknowledged:
                log.error(
                    "trimmed %d unacknowledged alarm(s) older than %.0f s from %s: the actuators "
                    "never acknowledged them (they stay in the database's alarms table)",
                    unacknowledged, self.max_age_s, self.stream,
                )  # fmt: skip
        return TrimResult(acknowledged, unacknowledged, int(self.client.xlen(self.stream)))

    # --- consumer side (actuators) ----------------------------------------------------
    def ensure_group(self, group: str) -> None:
        """Create the group (and the stream) unless it exists. From id 0: a group created after the
        stream lost its group (deleted, flushed, Redis restarted empty) reads every entry there."""
        try:
            self.client.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, group: str, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        reply = self.client.xreadgroup(group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return [entry for _, entries in reply or [] for entry in _entries(entries)]

    def reclaim(
        self, group: str, consumer: str, min_idle_ms: int, start_id: str = "0-0", count: int = 100
    ) -> Reclaimed:
        """Take over entries another consumer read but never acknowledged (it died), from
        ``start_id`` on; pass the returned cursor to the next call to go on through the list.

        A pending entry that is no longer on the stream is reported in ``deleted``. Redis 7 lists
        those ids itself (and drops them from the pending list); Redis 6.2 returns them as empty
        slots without an id, so they are looked up in this consumer's own pending list, which
        XAUTOCLAIM has just moved them to."""
        reply = self.client.xautoclaim(
            self.stream, group, consumer, min_idle_ms, start_id=start_id, count=count
        )
        cursor, claimed = text(reply[0]), reply[1]
        deleted = [text(i) for i in reply[2]] if len(reply) > 2 else []
        if any(entry_id is None or not fields for entry_id, fields in claimed):
            deleted += self._own_deleted(group, consumer, count)
        return Reclaimed(
            _entries([e for e in claimed if e[0] is not None]), sorted(set(deleted), key=_id_key), cursor
        )

    def _own_deleted(self, group: str, consumer: str, count: int) -> list[str]:
        """Ids in this consumer's pending list whose entries are gone (XREADGROUP from 0 shows them
        with no fields)."""
        reply = self.client.xreadgroup(group, consumer, {self.stream: "0"}, count=max(count, 100))
        return [text(entry_id) for _, entries in reply or [] for entry_id, fields in entries if not fields]

    def ack(self, group: str, entry_ids: Sequence[str]) -> int:
        return int(self.client.xack(self.stream, group, *entry_ids)) if entry_ids else 0

    def pending_count(self, group: str) -> int:
        try:
            return int(self.client.xpending(self.stream, group)["pending"])
        except redis.ResponseError:
            return 0

    # --- onlookers (the demo summary) ---------------------------------------------------
    def fields_after(self, entry_id: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` entries after ``entry_id`` as (id, fields), outside any consumer group:
        nothing is delivered or acknowledged, and a malformed entry is the caller's to judge."""
        return decode_entries(self.client.xrange(self.stream, min=f"({entry_id}", max="+", count=count))


def stream_backlog(client: redis.Redis, stream: str, group: str) -> tuple[int, int | None]:
    """(entries on ``stream``, entries delivered to ``group`` and not acknowledged; None while the
    group does not exist). XLEN and XPENDING only: reads the dashboard's ACL user may make."""
    length = int(client.xlen(stream))
    try:
        pending: int | None = int(client.xpending(stream, group)["pending"])
    except redis.ResponseError:  # NOGROUP: no actuator has joined yet
        pending = None
    return length, pending


def _entries(raw: Sequence) -> list[StreamEntry]:
    out = []
    for entry_id, fields in raw:
        if not fields:  # a deleted entry: the caller reports it (see AlarmStream.reclaim)
            continue
        decoded = decode_fields(fields)
        try:
            alarm: Alarm | None = Alarm.from_fields(decoded)
        except (KeyError, ValueError) as exc:
            log.error("alarm entry %s is malformed (%s): %s", text(entry_id), exc, decoded)
            alarm = None
        out.append(StreamEntry(text(entry_id), alarm, decoded))
    return out


def _id_key(entry_id: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence), not as text."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _successor(entry_id: str) -> str:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}"
