"""Alarms on real Redis: published per (frame, class), acted on, acked, reclaimed from a dead actuator;
the stream trimmed only below what the actuators acknowledged; the group recreated when it is lost."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from steelcore.alarm_message import Alarm
from steelcore.frame_message import FrameIdentity
from steelcore.redis.alarm_stream import AlarmStream, TrimResult
from workers.actuator import RejectActuator, log_reject
from workers.alarm_rules import AlarmRule, alarms_for_frame

pytestmark = pytest.mark.integration


@pytest.fixture()
def stream(redis_url: str) -> AlarmStream:
    client = redis.Redis.from_url(redis_url)
    name = f"test:alarms:{uuid.uuid4().hex[:8]}"
    return AlarmStream(client, name, name + ":live", maxlen=1000)


def _alarms(frame_id: str) -> list[Alarm]:
    return alarms_for_frame(
        AlarmRule((0.5,) * 4, (1,) * 4),
        FrameIdentity(frame_id, "L1", "C1", "K7", 42.0, datetime.now(UTC)),
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


# --- trimming: never past what the group has not acknowledged -----------------------------------


def _publish_n(stream: AlarmStream, n: int) -> list[str]:
    return stream.publish([a for k in range(n) for a in _alarms(f"T{k}")[:1]])


def test_trim_never_passes_what_the_group_has_not_acknowledged(stream: AlarmStream) -> None:
    stream.maxlen = 5
    group = "actuators"
    stream.ensure_group(group)
    ids = _publish_n(stream, 30)
    read = stream.read(group, "a1", count=10, block_ms=100)
    stream.ack(group, [e.entry_id for e in read[:8]])  # two stay pending

    first = stream.trim()
    assert (first.acknowledged, first.unacknowledged, first.length) == (8, 0, 22)
    assert stream.client.xrange(stream.stream, count=1)[0][0].decode() == ids[8]  # the oldest pending

    rest = stream.read(group, "a1", count=100, block_ms=100)
    stream.ack(group, [e.entry_id for e in read[8:] + rest])
    second = stream.trim()
    assert (second.acknowledged, second.length) == (17, 5)
    assert [e[0].decode() for e in stream.client.xrange(stream.stream)] == ids[-5:]


def test_a_stream_without_group_is_trimmed_only_by_age(stream: AlarmStream) -> None:
    stream.maxlen, stream.max_age_s = 2, 3600.0
    _publish_n(stream, 6)
    assert stream.trim() == TrimResult(0, 0, 6)  # nobody acknowledged anything: the cap waits
    later = time.time() + 2 * 3600
    assert stream.trim(now_s=later) == TrimResult(0, 6, 0)  # past the age bound: trimmed, as lost


def test_trim_by_age_counts_only_the_unacknowledged_as_lost(stream: AlarmStream) -> None:
    stream.maxlen, stream.max_age_s = 1000, 3600.0
    group = "actuators"
    stream.ensure_group(group)
    _publish_n(stream, 6)
    read = stream.read(group, "a1", count=4, block_ms=100)
    stream.ack(group, [e.entry_id for e in read[:3]])  # 3 acknowledged, 1 pending, 2 never read
    result = stream.trim(now_s=time.time() + 2 * 3600)
    assert result == TrimResult(acknowledged=3, unacknowledged=3, length=0)


# --- reclaim: its cursor, and pending entries deleted before anyone acted ------------------------


def test_reclaim_follows_its_cursor_through_a_long_pending_list(stream: AlarmStream) -> None:
    group = "actuators"
    stream.ensure_group(group)
    ids = _publish_n(stream, 250)
    stream.read(group, "dead", count=1000, block_ms=100)
    cursor, seen, passes = "0-0", [], 0
    while True:
        taken = stream.reclaim(group, "live", 0, start_id=cursor, count=100)
        seen += [e.entry_id for e in taken.entries]
        cursor, passes = taken.cursor, passes + 1
        if cursor == "0-0" or passes > 10:
            break
    assert seen == ids and passes == 3


def test_pending_entries_deleted_before_acting_are_reported_and_acknowledged(
    stream: AlarmStream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    group = "actuators"
    stream.ensure_group(group)
    ids = stream.publish(_alarms("D1") + _alarms("D2"))
    stream.read(group, "dead-actuator", count=10, block_ms=100)
    stream.client.xdel(stream.stream, ids[1])  # e.g. trimmed, or deleted by hand, while pending
    journal = tmp_path / "rejects.jsonl"
    actuator = RejectActuator(stream, group, "live", log_reject(journal), reclaim_idle_ms=200)
    with caplog.at_level(logging.ERROR, logger="steel.actuator"):
        worker = threading.Thread(target=actuator.run, kwargs={"block_ms": 100, "max_alarms": 3}, daemon=True)
        worker.start()
        worker.join(timeout=10)
    assert not worker.is_alive()
    assert sorted(json.loads(x)["alarm_id"] for x in journal.read_text().splitlines()) == [
        "D1:1",
        "D2:1",
        "D2:3",
    ]
    assert stream.pending_count(group) == 0, "the deleted entry stays pending forever"
    assert ids[1] in caplog.text, "the deleted pending entry was skipped without a log line"
    assert actuator.lost == 1


# --- the consumer group disappears under a running actuator -------------------------------------


def test_stream_deleted_while_the_actuator_runs(stream: AlarmStream, tmp_path: Path) -> None:
    """DEL of the stream (as FLUSHDB or a Redis restarted empty) takes the consumer group with it;
    the actuator must create it again and act on the alarms published afterwards within 10 s."""
    journal = tmp_path / "rejects.jsonl"
    actuator = RejectActuator(stream, "actuators", "a1", log_reject(journal), reclaim_idle_ms=200)
    worker = threading.Thread(target=actuator.run, kwargs={"block_ms": 200}, daemon=True)
    worker.start()
    try:
        stream.publish(_alarms("B1"))
        _wait_for(lambda: _journal_ids(journal) >= {"B1:1", "B1:3"}, 10, "the alarms before the DEL")
        stream.client.delete(stream.stream)
        time.sleep(0.5)  # the actuator meets NOGROUP before anything is published again
        stream.publish(_alarms("A1"))
        _wait_for(lambda: _journal_ids(journal) >= {"A1:1", "A1:3"}, 10, "the alarms after the DEL")
        assert stream.pending_count("actuators") == 0
    finally:
        actuator.stop_event.set()
        worker.join(5)


def _journal_ids(journal: Path) -> set[str]:
    if not journal.exists():
        return set()
    return {json.loads(line)["alarm_id"] for line in journal.read_text().splitlines() if line}


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.05)


def test_an_onlooker_reads_entries_after_an_id_without_a_group(stream: AlarmStream) -> None:
    first = stream.publish(_alarms("F1"))
    second = stream.publish(_alarms("F2"))
    entries = stream.fields_after(first[0], count=10)
    assert [entry_id for entry_id, _ in entries] == [first[1], *second]
    assert [fields["alarm_id"] for _, fields in entries] == ["F1:3", "F2:1", "F2:3"]
    assert stream.fields_after(second[-1], count=10) == []
    assert len(stream.fields_after("0-0", count=2)) == 2
    assert stream.pending_count("actuators") == 0


def test_the_demo_summary_times_each_alarm_of_its_line_once(stream: AlarmStream, tmp_path: Path) -> None:
    from stack.demo_summary import LiveSummary
    from steelcore.settings import Settings

    started = datetime.now(UTC)
    summary = LiveSummary(
        Settings(alarm_stream=stream.stream), line_id="L1", started=started, engine=None,
        redis_client=stream.client, truth=None, metrics_urls=[], journal=tmp_path / "none.jsonl",  # type: ignore[arg-type]
    )  # fmt: skip
    stream.publish(_alarms("F1"))
    stream.publish(_alarms("F1"))  # a redelivered batch publishes its alarms again
    other = [Alarm.from_fields({**a.to_fields(), "line_id": "L9"}) for a in _alarms("F9")]
    stream.publish(other)
    summary._read_alarm_stream()
    assert sorted(summary._alarms_seen) == ["F1:1", "F1:3"]
    assert len(summary._alarm_latencies) == 2 and all(ms >= -5 for ms in summary._alarm_latencies)
