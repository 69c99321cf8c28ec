"""Reference reject actuator: how automation integrates with the alarm stream.

It reads alarms in a Redis consumer group, acts (here: logs a reject command with coil
and position, and appends it to a JSON-lines file a PLC bridge could tail), then
acknowledges. Entries that a dead actuator read but never acknowledged are reclaimed
after ``--reclaim-idle-ms``. Delivery is at-least-once: an actuator killed between
acting and acknowledging acts again after reclaim, so the action must be idempotent
per alarm_id (rejecting the same strip position twice is harmless).
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

import redis

from steelcore import exit_codes
from steelcore.settings import Settings, get_settings
from workers.alarm_rules import Alarm
from workers.alarm_stream import AlarmStream, StreamEntry

log = logging.getLogger("steel.actuator")


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

    def run(self, block_ms: int = 500, max_alarms: int | None = None) -> None:
        """Loop until stopped (or max_alarms acted): reclaim orphans, read, act, acknowledge."""
        self.stream.ensure_group(self.group)
        last_reclaim = 0.0
        while not self.stop_event.is_set():
            try:
                if time.monotonic() - last_reclaim > self.reclaim_idle_ms / 2000:
                    last_reclaim = time.monotonic()
                    self._handle(self.stream.reclaim(self.group, self.consumer, self.reclaim_idle_ms))
                self._handle(self.stream.read(self.group, self.consumer, count=64, block_ms=block_ms))
            except redis.RedisError as exc:
                # Alarms stay in the stream while Redis is away; wait and carry on.
                log.warning("redis unavailable (%s); retrying in 1 s", exc)
                self.stop_event.wait(1.0)
            if max_alarms is not None and self.acted >= max_alarms:
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
            alarm.area_px, alarm.probability, alarm.alarm_id,
        )  # fmt: skip
        if journal is not None:
            record = {"command": "reject", "acted_at": time.time(), **alarm.to_fields()}
            with journal.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    return act


def alarm_stream_from_settings(settings: Settings) -> AlarmStream:
    from steelcore.service_urls import redis_url

    client = redis.Redis.from_url(redis_url(settings), socket_timeout=5, health_check_interval=10)
    return AlarmStream(client, settings.alarm_stream, settings.alarm_channel, settings.alarm_stream_maxlen)


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
        stream.client.ping()
    except redis.RedisError as exc:
        log.error("cannot reach Redis: %s", exc)
        return exit_codes.UNAVAILABLE
    log.info("actuator %s reading %s in group %s", args.consumer, settings.alarm_stream, actuator.group)
    try:
        actuator.run(max_alarms=args.max_alarms)
    except KeyboardInterrupt:
        pass
    return exit_codes.OK
