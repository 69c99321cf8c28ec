"""The alarm rule: per class, probability AND area must reach their minimum."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from steelcore.alarm_message import Alarm
from steelcore.frame_message import FrameIdentity
from steelcore.settings import Settings
from workers.alarm_rules import AlarmRule, alarm_key_for, alarms_for_frame

RULE = AlarmRule(min_probability=(0.5, 0.6, 0.7, 0.8), min_area_px=(10, 20, 30, 40))


def _alarms(probs: list[float], areas: list[int]) -> list[Alarm]:
    identity = FrameIdentity("F1", "L1", "C1", "K1", 3.25, datetime(2026, 11, 26, tzinfo=UTC))
    return alarms_for_frame(RULE, identity, probabilities=probs, areas_px=areas)


@pytest.mark.parametrize(
    ("probs", "areas", "expected_classes"),
    [
        ([0.9, 0.9, 0.9, 0.9], [100, 100, 100, 100], [1, 2, 3, 4]),
        ([0.49, 0.6, 0.69, 0.8], [100, 100, 100, 100], [2, 4]),  # probability boundaries
        ([0.9, 0.9, 0.9, 0.9], [9, 20, 29, 40], [2, 4]),  # area boundaries
        ([0.9, 0.9, 0.9, 0.9], [0, 0, 0, 0], []),  # nothing segmented: no alarm whatever the classifier says
        ([0.1, 0.1, 0.1, 0.1], [1000, 1000, 1000, 1000], []),
    ],
)
def test_rule_needs_probability_and_area(
    probs: list[float], areas: list[int], expected_classes: list[int]
) -> None:
    assert [a.class_id for a in _alarms(probs, areas)] == expected_classes


def test_alarm_key_is_stable_and_fields_round_trip() -> None:
    (alarm,) = _alarms([0.95, 0, 0, 0], [50, 0, 0, 0])
    assert alarm.alarm_key == alarm_key_for("F1", 1) == "F1:1"
    assert alarm.to_fields()["alarm_id"] == "F1:1"  # the stream field keeps the name actuators read
    assert alarm.class_name == "pitting"
    assert Alarm.from_fields(alarm.to_fields()) == alarm


def test_rule_comes_from_settings() -> None:
    rule = AlarmRule.from_settings(
        Settings(alarm_min_probability=(0.1, 0.2, 0.3, 0.4), alarm_min_area_px=(1, 2, 3, 4))
    )
    assert rule.fires(3, 0.4, 4) and not rule.fires(3, 0.39, 4) and not rule.fires(3, 0.4, 3)
