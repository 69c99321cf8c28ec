"""Alarms on real Redis: published per (frame, class), acted on, acked, reclaimed from a dead actuator."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from workers.actuator import RejectActuator, log_reject
from workers.alarm_rules import Alarm, AlarmRule, alarms_for_frame
from workers.alarm_stream import AlarmStream

pytestmark = pytest.mark.integration


@pytest.fixture()
def stream(redis_url: str) -> AlarmStream:
    client = redis.Redis.from_url(redis_url)
    name = f"test:alarms:{uuid.uuid4().hex[:8]}"
    return AlarmStream(client, name, name + ":live", maxlen=1000)


def _alarms(frame_id: str) -> list[Alarm]:
    return alarms_for_frame(
        AlarmRule((0.5,) * 4, (1,) * 4),
        frame_id=frame_id,
        line_id="L1",
        camera_id="C1",
        coil_id="K7",
        position_m=42.0,
        captured_at=datetime.now(UTC),
        probabilities=[0.9, 0.1, 0.9, 0.1],
        areas_px=[10, 10, 10, 10],
    )


def test_publish_reaches_stream_and_live_channel(stream: AlarmStream) -> None:
    pubsub = stream.client.pubsub()
    pubsub.subscribe(stream.channel)
    assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"
    ids = stream.publish(_alarms("F1"))
    assert len(ids) == 2
    assert stream.client.xlen(stream.stream) == 2
    live = [pubsub.get_message(timeout=1.0) for _ in range(2)]
    assert [json.loads(m["data"])["alarm_id"] for m in live] == ["F1:1", "F1:3"]


def test_actuator_acts_acknowledges_and_reclaims(stream: AlarmStream, tmp_path: Path) -> None:
    group = "actuators"
    stream.ensure_group(group)
    stream.ensure_group(group)  # idempotent
    stream.publish(_alarms("F1") + _alarms("F2"))

    # A first actuator reads everything, then "dies" before acknowledging.
    dead = stream.read(group, "dead-actuator", count=10, block_ms=100)
    assert len(dead) == 4
    assert stream.pending_count(group) == 4

    journal = tmp_path / "rejects.jsonl"
    actuator = RejectActuator(stream, group, "live-actuator", log_reject(journal), reclaim_idle_ms=200)
    worker = threading.Thread(target=actuator.run, kwargs={"block_ms": 100, "max_alarms": 4}, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "actuator did not reclaim the dead consumer's alarms"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(r["alarm_id"] for r in records) == ["F1:1", "F1:3", "F2:1", "F2:3"]
    assert all(r["coil_id"] == "K7" and r["position_m"] == "42.0" for r in records)
    assert stream.pending_count(group) == 0


def test_malformed_entry_is_acknowledged_not_acted(stream: AlarmStream, tmp_path: Path) -> None:
    group = "actuators"
    stream.ensure_group(group)
    stream.client.xadd(stream.stream, {"alarm_id": "broken"})
    stream.publish(_alarms("F3")[:1])
    journal = tmp_path / "rejects.jsonl"
    actuator = RejectActuator(stream, group, "a1", log_reject(journal), reclaim_idle_ms=200)
    actuator.run(block_ms=100, max_alarms=1)
    assert [json.loads(x)["alarm_id"] for x in journal.read_text().splitlines()] == ["F3:1"]
    assert stream.pending_count(group) == 0
