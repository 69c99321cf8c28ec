"""The alarm message: one entry on the Redis alarm stream, written by workers, read by actuators.

A contract between processes (and the plant automation behind the actuators), so it lives in the
shared package rather than next to the rules that decide when an alarm fires (workers/alarm_rules.py).
Every field travels as a string; ``alarm_key`` is "frame:class", stable, so an actuator can tell a
re-published alarm from a new one. On the stream (and in actuator journals) it keeps its first name,
``alarm_id``, which actuators and plant bridges read; in the code ``alarm_id`` is the alarms table's
serial number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Attribute -> stream field, where they differ.
WIRE_NAMES = {"alarm_key": "alarm_id"}


@dataclass(frozen=True)
class Alarm:
    """One alarm per (frame, class). alarm_key is stable, so a re-published alarm is recognisable."""

    alarm_key: str
    frame_id: str
    class_id: int
    class_name: str
    probability: float
    area_px: int
    line_id: str
    camera_id: str
    coil_id: str
    position_m: float
    captured_at: str

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for a Redis stream entry."""
        return {WIRE_NAMES.get(k, k): str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Alarm:
        return cls(
            alarm_key=fields["alarm_id"],
            frame_id=fields["frame_id"],
            class_id=int(fields["class_id"]),
            class_name=fields["class_name"],
            probability=float(fields["probability"]),
            area_px=int(fields["area_px"]),
            line_id=fields["line_id"],
            camera_id=fields["camera_id"],
            coil_id=fields["coil_id"],
            position_m=float(fields["position_m"]),
            captured_at=fields["captured_at"],
        )
