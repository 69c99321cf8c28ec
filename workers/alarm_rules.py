"""Which detections raise an alarm, and what an alarm says. Pure logic, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from steelcore.alarm_message import Alarm
from steelcore.frame_message import FrameIdentity
from steelcore.settings import Settings
from steelcore.severstal import CLASS_IDS, CLASS_NAMES


@dataclass(frozen=True)
class AlarmRule:
    """Per class (index 0 = class 1): an alarm fires when probability AND area reach these."""

    min_probability: tuple[float, ...]
    min_area_px: tuple[int, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> AlarmRule:
        return cls(tuple(settings.alarm_min_probability), tuple(settings.alarm_min_area_px))

    def fires(self, class_index: int, probability: float, area_px: int) -> bool:
        return (
            area_px > 0
            and probability >= self.min_probability[class_index]
            and area_px >= self.min_area_px[class_index]
        )


def alarm_key_for(frame_id: str, class_id: int) -> str:
    return f"{frame_id}:{class_id}"


def frame_alarm(identity: FrameIdentity, class_id: int, probability: float, area_px: int) -> Alarm:
    """The stream alarm of one class of a frame, whoever publishes it (the worker or the relay)."""
    return Alarm(
        alarm_key=alarm_key_for(identity.frame_id, class_id),
        frame_id=identity.frame_id,
        class_id=class_id,
        class_name=CLASS_NAMES.get(class_id, f"class {class_id}"),
        # Stored as REAL: rounded here, a relayed alarm reads like a direct one.
        probability=round(float(probability), 4),
        area_px=int(area_px),
        line_id=identity.line_id,
        camera_id=identity.camera_id,
        coil_id=identity.coil_id,
        position_m=float(identity.position_m),
        captured_at=identity.captured_at.isoformat(),
    )


def alarms_for_frame(
    rule: AlarmRule,
    identity: FrameIdentity,
    *,
    probabilities: Sequence[float],
    areas_px: Sequence[int],
) -> list[Alarm]:
    """The alarms one inferred frame raises, in class order."""
    alarms = []
    for index, class_id in enumerate(CLASS_IDS):
        if rule.fires(index, float(probabilities[index]), int(areas_px[index])):
            alarms.append(frame_alarm(identity, class_id, probabilities[index], areas_px[index]))
    return alarms
