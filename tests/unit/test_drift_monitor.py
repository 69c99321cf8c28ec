"""The drift monitor: one inspection alarm per camera and episode, against the bundle's reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.model_bundle import resolve_bundle_path
from workers.drift_monitor import DriftMonitor, DriftReference, frame_input_stats, near_threshold

GATES = (0.5, 0.5, 0.5, 0.5)
CLEAN = (0.1, 0.1, 0.1, 0.1)


def reference() -> DriftReference:
    return DriftReference(
        input_mean={"brightness": 90.0, "contrast": 30.0, "texture": 15.0},
        input_std={"brightness": 20.0, "contrast": 10.0, "texture": 4.0},
        defect_share=(0.0, 0.0, 0.3, 0.1),
        near_share=0.1,
        near_margin=0.1,
        frames=100,
    )


def feed(monitor: DriftMonitor, camera: str, brightness: float, n: int, present=(False,) * 4) -> list:
    events = []
    for _ in range(n):
        inputs = {"brightness": brightness, "contrast": 30.0, "texture": 15.0}
        event = monitor.observe(camera, inputs, CLEAN, present, GATES)
        events += [event] if event else []
    return events


def test_a_darker_camera_raises_one_alarm_per_episode_and_clears():
    monitor = DriftMonitor(reference(), window=50)
    assert feed(monitor, "L1/cam1", 90.0, 200) == []
    dark = feed(monitor, "L1/cam1", 55.0, 300)  # 35 gray levels darker: 1.75 reference spreads
    assert [(e.statistics, e.state) for e in dark] == [(("brightness",), "raised")]
    # Raised as soon as the window's mean crosses 1.5 spreads (30 gray levels), not at the end.
    assert "30 gray levels darker than the model knows" in dark[0].message and "L1/cam1" in dark[0].message
    assert monitor.drifting("L1/cam1") == {"brightness"}
    back = feed(monitor, "L1/cam1", 92.0, 300)
    assert [(e.statistics, e.state) for e in back] == [(("brightness",), "cleared")]
    again = feed(monitor, "L1/cam1", 50.0, 100)
    assert [e.state for e in again] == ["raised"]  # a new episode


def test_cameras_are_judged_apart_and_not_before_a_full_window():
    monitor = DriftMonitor(reference(), window=50)
    assert feed(monitor, "L1/cam2", 20.0, 49) == []  # 49 frames: too few to say anything
    assert [e.camera for e in feed(monitor, "L1/cam2", 20.0, 1)] == ["L1/cam2"]
    assert feed(monitor, "L1/cam3", 90.0, 100) == []
    assert monitor.drifting("L1/cam3") == set()


def test_statistics_drifting_together_are_one_episode():
    monitor = DriftMonitor(reference(), window=20)
    events = []
    for _ in range(100):  # a darker lamp: brightness, contrast and texture all fall
        event = monitor.observe(
            "c", {"brightness": 40.0, "contrast": 10.0, "texture": 5.0}, CLEAN, [False] * 4, GATES
        )
        events += [event] if event else []
    assert [e.state for e in events] == ["raised"]
    assert set(events[0].statistics) == {"brightness", "contrast", "texture"}
    assert "darker" in events[0].message and "flatter" in events[0].message
    assert monitor.drifting("c") == {"brightness", "contrast", "texture"}


def test_hovering_between_the_clear_and_raise_levels_stays_one_episode():
    monitor = DriftMonitor(reference(), window=10, raise_z=1.5, clear_z=1.0)
    events = feed(monitor, "c", 55.0, 20)  # z = -1.75
    for _ in range(10):
        events += feed(monitor, "c", 64.0, 10)  # z = -1.3: between the two levels
        events += feed(monitor, "c", 58.0, 10)  # z = -1.6
    assert [e.state for e in events] == ["raised"]


def test_a_defect_share_above_the_reference_raises_and_a_cleaner_line_never_does():
    monitor = DriftMonitor(reference(), window=40)
    assert feed(monitor, "c", 90.0, 200, present=(False,) * 4) == []  # no class-3 defects at all
    events = feed(monitor, "c", 90.0, 40, present=(False, False, True, False))
    assert [(e.statistics, e.state) for e in events] == [(("defect_share_c3",), "raised")]
    assert "class 3" in events[0].message


def test_near_threshold_share_counts_probabilities_close_to_a_gate():
    assert near_threshold((0.45, 0.0, 0.0, 0.0), GATES, 0.1)
    assert not near_threshold((0.2, 0.9, 0.0, 1.0), GATES, 0.1)
    # A gate of 0 is no gate: a low probability there is not a close call.
    assert not near_threshold((0.05,), (0.0,), 0.1)


def test_thresholds_must_leave_room_for_hysteresis():
    with pytest.raises(ValueError, match="hysteresis"):
        DriftMonitor(reference(), raise_z=1.0, clear_z=1.0)
    with pytest.raises(ValueError, match="window"):
        DriftMonitor(reference(), window=0)


def test_input_statistics_follow_the_camera_gain():
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(100, 20, size=(256, 1600)), 0, 255).astype(np.uint8)
    darker = (frame * 0.6).astype(np.uint8)
    blurred = cv2.GaussianBlur(frame, (0, 0), 6)
    base, dark, blur = (
        frame_input_stats(frame, 120_000),
        frame_input_stats(darker),
        frame_input_stats(blurred),
    )
    assert base["brightness"] == pytest.approx(frame.mean()) and base["jpeg_kb"] == pytest.approx(117.1875)
    assert dark["brightness"] < 0.65 * base["brightness"] and dark["contrast"] < base["contrast"]
    assert "jpeg_kb" not in dark  # a raw frame has no JPEG size to compare
    assert blur["texture"] < 0.5 * base["texture"]


def test_reference_round_trips_and_rejects_other_versions(tmp_path):
    ref = reference()
    ref.save(tmp_path)
    assert DriftReference.load(tmp_path) == ref
    assert DriftReference.load(tmp_path / "missing") is None
    data = ref.to_json() | {"version": 99}
    with pytest.raises(ValueError, match="version 99"):
        DriftReference.from_json(data)


def test_the_shipped_bundle_carries_a_reference_for_its_classes():
    ref = DriftReference.load(resolve_bundle_path("default"))
    assert ref is not None and ref.frames >= 100
    assert len(ref.defect_share) == 4 and set(ref.input_mean) >= {"brightness", "contrast", "texture"}
    assert all(ref.input_std[k] > 0 for k in ref.input_mean)


def test_the_worker_watches_the_served_bundle_unless_settings_or_reference_forbid(tmp_path, caplog):
    import redis

    from steelcore.settings import Settings
    from workers.drift_watch import DriftWatch
    from workers.worker_metrics import WorkerMetrics

    client = redis.Redis()  # never connected: nothing is published here
    watch = DriftWatch.from_settings(Settings(), client, WorkerMetrics())
    assert watch is not None and watch.monitor.reference.frames >= 100  # models/default's reference
    inconsistent = Settings(drift_raise_z=1.0, drift_clear_z=2.0)
    assert DriftWatch.from_settings(inconsistent, client, WorkerMetrics()) is None
    assert "inconsistent" in caplog.text
    missing = Settings(drift_reference_path=tmp_path / "none.json")
    assert DriftWatch.from_settings(missing, client, WorkerMetrics()) is None
    assert "no drift reference" in caplog.text


def test_after_a_promotion_frames_are_judged_against_the_new_bundles_reference(tmp_path):
    import redis

    from steelcore.redis.inspection_alarms import InspectionAlarms
    from workers.drift_watch import DriftWatch
    from workers.worker_metrics import WorkerMetrics

    dark = DriftReference(
        input_mean={"brightness": 40.0}, input_std={"brightness": 10.0}, defect_share=(0.1,) * 4,
        near_share=0.1, near_margin=0.1, frames=50,
    )  # fmt: skip
    (tmp_path / "night-camera").mkdir()
    dark.save(tmp_path / "night-camera")
    (tmp_path / "no-reference").mkdir()
    alarms = InspectionAlarms(redis.Redis(), "test:inspection")  # never connected here
    watch = DriftWatch(DriftMonitor(reference(), window=10), alarms, WorkerMetrics(), "default", tmp_path)
    watch.follow("no-reference")  # inputs against the old reference; its outputs are its own
    assert watch.model == "default" and watch.monitor.reference == reference()
    assert watch.monitor.outputs is False
    for _ in range(20):  # a model marking class 3 on every frame raises nothing under it
        assert (
            watch.monitor.observe("c", {"brightness": 90.0}, CLEAN, [False, False, True, False], GATES)
            is None
        )
    watch.follow("default")  # rolled back: outputs are judged again
    assert watch.model == "default" and watch.monitor.outputs is True
    watch.follow("night-camera")
    assert watch.model == "night-camera" and watch.monitor.reference == dark and watch.monitor.outputs
    assert watch.monitor.window == 10
    # A watch given one fixed reference (STEEL_DRIFT_REFERENCE_PATH) keeps it.
    fixed = DriftWatch(DriftMonitor(reference()), alarms, WorkerMetrics(), "default", None)
    fixed.follow("night-camera")
    assert fixed.monitor.reference == reference()


def test_a_short_window_does_not_alarm_on_the_chance_spread_of_a_common_class():
    ref = reference()  # class 3 on 30% of the reference frames
    monitor = DriftMonitor(ref, window=10)
    six_of_ten = [i % 10 < 6 for i in range(10)]  # 60%: +0.30 over the reference, 2 standard errors
    events = [
        monitor.observe("c", {"brightness": 90.0}, CLEAN, [False, False, hit, False], GATES)
        for hit in six_of_ten
    ]
    assert [e for e in events if e] == []
    all_ten = [
        monitor.observe("c", {"brightness": 90.0}, CLEAN, [False, False, True, False], GATES)
        for _ in range(10)
    ]
    assert [e.statistics for e in all_ten if e] == [("defect_share_c3",)]
