"""Reference reject actuator: how automation integrates with the alarm stream.

It reads alarms in a Redis consumer group, acts (here: logs a reject command with coil
and position, and appends it to a JSON-lines file a PLC bridge could tail), then
acknowledges. Entries that a dead actuator read but never acknowledged are reclaimed
after ``--reclaim-idle-ms``. Delivery is at-least-once: an actuator killed between
acting and acknowledging acts again after reclaim, so the action must be idempotent
per alarm key (the entry's alarm_id field; rejecting the same strip position twice is harmless).

When the consumer group disappears (the stream deleted or flushed, Redis restarted without
its data) every read fails with NOGROUP: the actuator creates the group again, from id 0, so
it reads whatever the workers have published since, and goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from steelcore import exit_codes
from steelcore.alarm_message import Alarm
from steelcore.redis.alarm_stream import AlarmStream, StreamEntry
from steelcore.redis.connection import alarm_stream_from_settings, check_reachable
from steelcore.redis.exceptions import RedisError, RedisUnavailableError, ResponseError
from steelcore.settings import get_settings

log = logging.getLogger("steel.actuator")

# XAUTOCLAIM passes per reclaim round (100 entries each); the round goes on from its cursor later.
RECLAIM_PASSES = 10


class RejectActuator:
    def __init__(
        self,
        stream: AlarmStream,
        group: str,
        consumer: str,
        act: Callable[[Alarm], None],
        reclaim_idle_ms: int = 5000,
    ) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.act = act
        self.reclaim_idle_ms = reclaim_idle_ms
        self.stop_event = threading.Event()
        self.acted = 0
        self.lost = 0  # pending entries found deleted before anyone acted on them
        self._reclaim_cursor = "0-0"

    def run(self, block_ms: int = 500, max_alarms: int | None = None) -> None:
        """Loop until stopped (or max_alarms acted): reclaim orphans, read, act, acknowledge."""
        group_ready = False
        last_reclaim = 0.0
        while not self.stop_event.is_set():
            try:
                if not group_ready:
                    self.stream.ensure_group(self.group)
                    group_ready = True
                if time.monotonic() - last_reclaim > self.reclaim_idle_ms / 2000:
                    last_reclaim = time.monotonic()
                    self._reclaim()
                self._handle(self.stream.read(self.group, self.consumer, count=64, block_ms=block_ms))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.warning("redis refused (%s); retrying in 1 s", exc)
                    self.stop_event.wait(1.0)
                    continue
                # The group went with the stream; what is published from now on goes to a new one.
                log.warning(
                    "consumer group %s of %s is gone (%s); creating it again",
                    self.group,
                    self.stream.stream,
                    exc,
                )
                group_ready = False
                self._reclaim_cursor = "0-0"
            except RedisError as exc:
                # Alarms stay in the stream while Redis is away; wait and carry on.
                log.warning("redis unavailable (%s); retrying in 1 s", exc)
                self.stop_event.wait(1.0)
            if max_alarms is not None and self.acted >= max_alarms:
                return

    def _reclaim(self) -> None:
        """One round through the group's pending list, from where the last round stopped: each
        XAUTOCLAIM pass looks at a limited part of it, and starting again at 0-0 every time would
        never reach the entries behind a long head of recently read ones."""
        for _ in range(RECLAIM_PASSES):
            taken = self.stream.reclaim(self.group, self.consumer, self.reclaim_idle_ms, self._reclaim_cursor)
            self._reclaim_cursor = taken.cursor
            if taken.deleted:
                # Read by a consumer that died, then trimmed or deleted before anyone acted: the
                # alarm is lost to the actuators (its row stays in the database's alarms table).
                self.lost += len(taken.deleted)
                log.error(
                    "%d pending alarm entries deleted from %s before being acted on: %s",
                    len(taken.deleted),
                    self.stream.stream,
                    ", ".join(taken.deleted[:20]),
                )
                self.stream.ack(self.group, taken.deleted)  # Redis 6.2 keeps them pending otherwise
            self._handle(taken.entries)
            if taken.cursor == "0-0":
                return

    def _handle(self, entries: list[StreamEntry]) -> None:
        done = []
        for entry in entries:
            if entry.alarm is not None:
                self.act(entry.alarm)
                self.acted += 1
            done.append(entry.entry_id)
        self.stream.ack(self.group, done)


def log_reject(journal: Path | None) -> Callable[[Alarm], None]:
    """The reference action: a reject command in the log (and a JSON line for a PLC bridge)."""

    def act(alarm: Alarm) -> None:
        log.info(
            "REJECT line=%s coil=%s position=%.2f m class=%d (%s) area=%d px p=%.2f alarm=%s",
            alarm.line_id, alarm.coil_id, alarm.position_m, alarm.class_id, alarm.class_name,
            alarm.area_px, alarm.probability, alarm.alarm_key,
        )  # fmt: skip
        if journal is not None:
            record = {"command": "reject", "acted_at": time.time(), **alarm.to_fields()}
            with journal.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    return act


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}", help="consumer name")
    parser.add_argument("--group", default=None, help="consumer group (default: settings.actuator_group)")
    parser.add_argument("--journal", type=Path, default=None, help="append each reject command as JSON here")
    parser.add_argument("--reclaim-idle-ms", type=int, default=5000, help="reclaim entries pending this long")
    parser.add_argument("--max-alarms", type=int, default=None, help="stop after acting on this many")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    stream = alarm_stream_from_settings(settings)
    group = args.group or settings.actuator_group
    actuator = RejectActuator(stream, group, args.consumer, log_reject(args.journal), args.reclaim_idle_ms)
    signal.signal(signal.SIGTERM, lambda *_: actuator.stop_event.set())
    try:
        check_reachable(stream.client)
    except RedisUnavailableError as exc:
        log.error("%s", exc)
        return exit_codes.UNAVAILABLE
    log.info("actuator %s reading %s in group %s", args.consumer, settings.alarm_stream, actuator.group)
    try:
        actuator.run(max_alarms=args.max_alarms)
    except KeyboardInterrupt:
        pass
    return exit_codes.OK
