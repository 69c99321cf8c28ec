"""Inspection alarms on real Redis: two workers seeing the same drifting camera publish one raise and
one clear per episode, and the active episodes are listed for the live page."""

from __future__ import annotations

import uuid

import pytest
import redis

from steelcore.redis.inspection_alarms import InspectionAlarms
from workers.drift_monitor import DriftMonitor, DriftReference

pytestmark = pytest.mark.integration

GATES = (0.5,) * 4


@pytest.fixture()
def alarms(redis_url: str) -> InspectionAlarms:
    return InspectionAlarms(redis.Redis.from_url(redis_url), f"test:inspection:{uuid.uuid4().hex[:8]}")


def _reference() -> DriftReference:
    return DriftReference(
        input_mean={"brightness": 90.0},
        input_std={"brightness": 15.0},
        defect_share=(0.1,) * 4,
        near_share=0.1,
        near_margin=0.1,
        frames=50,
    )


def test_two_workers_raise_and_clear_one_episode_once(alarms: InspectionAlarms) -> None:
    workers = [DriftMonitor(_reference(), window=20), DriftMonitor(_reference(), window=20)]
    published = []
    # Both workers judge alternate frames of the same camera: 60 normal, 200 darker, 200 normal.
    levels = [90.0] * 60 + [55.0] * 200 + [88.0] * 200
    for i, level in enumerate(levels):
        event = workers[i % 2].observe("L1/cam2", {"brightness": level}, (0.1,) * 4, [False] * 4, GATES)
        if event is not None:
            entry = alarms.publish(event, model="default:1")
            if entry is not None:
                published.append(event.state)
        if i == 200:  # mid-episode: the live page sees it
            active = alarms.active()
            assert list(active) == ["L1/cam2"] and "darker" in active["L1/cam2"]["message"]
    assert published == ["raised", "cleared"]
    assert alarms.active() == {}
    entries = alarms.recent()
    assert [e["state"] for e in entries] == ["cleared", "raised"]
    assert {e["camera"] for e in entries} == {"L1/cam2"} and entries[1]["model"] == "default:1"
    assert entries[1]["kind"] == "inspection" and "brightness" in entries[1]["statistics"]


def test_cameras_have_episodes_of_their_own(alarms: InspectionAlarms) -> None:
    monitor = DriftMonitor(_reference(), window=10)
    for camera, level in (("L1/cam1", 40.0), ("L1/cam2", 90.0), ("L2/cam1", 150.0)):
        for _ in range(20):
            event = monitor.observe(camera, {"brightness": level}, (0.1,) * 4, [False] * 4, GATES)
            if event is not None:
                alarms.publish(event)
    active = alarms.active()
    assert sorted(active) == ["L1/cam1", "L2/cam1"]
    assert "darker" in active["L1/cam1"]["message"] and "brighter" in active["L2/cam1"]["message"]


def test_a_worker_that_took_a_camera_over_ends_the_episode_another_raised(alarms: InspectionAlarms) -> None:
    from workers.drift_watch import DriftWatch
    from workers.worker_metrics import WorkerMetrics

    first = DriftMonitor(_reference(), window=10)
    for _ in range(10):
        event = first.observe("L1/cam2", {"brightness": 40.0}, (0.1,) * 4, [False] * 4, GATES)
        if event is not None:
            alarms.publish(event)
    assert list(alarms.active()) == ["L1/cam2"]
    # The camera moves to another worker (a rebalance) and is back to normal there: that worker
    # never raised, yet ends the episode once its own window is full.
    watch = DriftWatch(DriftMonitor(_reference(), window=10), alarms, WorkerMetrics())
    for _ in range(10):
        watch.monitor.observe("L1/cam2", {"brightness": 90.0}, (0.1,) * 4, [False] * 4, GATES)
    watch._reconcile()
    watch.flush()
    assert alarms.active() == {}
    assert [e["state"] for e in alarms.recent()] == ["cleared", "raised"]
