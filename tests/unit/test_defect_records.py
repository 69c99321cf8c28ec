"""FrameRecord / DefectRecord / AlarmRecord validation and the severity rule (no database)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest

from steelcore import rle
from steelcore.frame_message import FrameIdentity
from steelcore.postgres.defect_writes import SEVERITY_FULL_SCALE, severity
from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def _defect(class_id: int = 1, area: int = 50) -> DefectRecord:
    return DefectRecord(class_id, "1 50", area, (0, 0, 0, 49), 0.8)


def _frame(**overrides: object) -> FrameRecord:
    fields: dict[str, object] = {
        "frame_id": "f1",
        "line_id": "L1",
        "camera_id": "C1",
        "coil_id": "K1",
        "position_m": 3.5,
        "captured_at": T0,
        "received_at": T0,
        "model_name": "default",
        "model_version": "1",
        "defects": (_defect(),),
    }
    fields.update(overrides)
    return FrameRecord(**fields)  # type: ignore[arg-type]


def test_a_valid_frame_is_accepted() -> None:
    frame = _frame(alarms=(AlarmRecord(1, 0.8, 50, T0),), class_probs=(0.8, 0.1, 0.0, 0.2))
    assert frame.defects[0].class_id == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"captured_at": datetime(2025, 3, 1, 8, 0)}, "captured_at must be timezone-aware"),
        ({"received_at": datetime(2025, 3, 1, 8, 0)}, "received_at must be timezone-aware"),
        ({"frame_id": ""}, "frame_id must be a non-empty string"),
        ({"position_m": -1.0}, "position_m must be >= 0"),
        ({"position_m": float("nan")}, "position_m must be >= 0"),
        ({"defects": (_defect(1), _defect(1))}, "two defects of one class"),
        ({"alarms": (AlarmRecord(2, 0.9, 50, T0),)}, "alarm for class \\[2\\] without a defect"),
        ({"class_probs": (0.5, 1.5)}, "class probability must be within"),
        ({"defects": (DefectRecord(1, "1 5", 5, (1599, 0, 1600, 4), 0.5),)}, "outside 1600x256"),
        ({"height": 0}, "frame size must be positive"),
    ],
)
def test_malformed_frames_are_rejected_with_the_reason(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _frame(**overrides)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, "1 5", 5, (0, 0, 0, 4), 0.5), "class_id must be >= 1"),
        ((1, "1 5", 0, (0, 0, 0, 4), 0.5), "area_px must be positive"),
        ((1, "", 5, (0, 0, 0, 4), 0.5), "rle is empty"),
        ((1, "1 5", 5, (3, 0, 2, 4), 0.5), "bbox must satisfy"),
        ((1, "1 5", 5, (0, 0, 0, 4), 1.2), "probability must be within"),
    ],
)
def test_malformed_defects_are_rejected(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DefectRecord(*args)


def test_alarm_needs_aware_times() -> None:
    with pytest.raises(ValueError, match="raised_at must be timezone-aware"):
        AlarmRecord(1, 0.9, 10, datetime(2025, 1, 1))


def test_from_mask_measures_the_mask_and_round_trips_through_rle() -> None:
    mask = np.zeros((256, 1600), dtype=np.uint8)
    mask[10:20, 100:130] = 1
    mask[200, 1599] = 1
    record = DefectRecord.from_mask(3, mask, 0.75)
    assert record is not None
    assert record.area_px == 10 * 30 + 1
    assert record.bbox == (100, 10, 1599, 200)
    np.testing.assert_array_equal(rle.decode(record.rle, mask.shape), mask)
    assert DefectRecord.from_mask(3, np.zeros_like(mask), 0.75) is None


def test_the_worker_measures_a_decoded_mask_as_from_mask_does() -> None:
    from workers.frame_batch import defects_of

    mask = np.zeros((256, 1600), dtype=np.uint8)
    mask[5:9, 40:47] = 1
    encoded = rle.encode(mask)
    (found,) = defects_of([0.1, 0.9, 0.1, 0.1], ["", encoded, "", ""])
    expected = DefectRecord.from_mask(2, mask, 0.9)
    assert expected is not None
    assert (found.area_px, found.bbox) == (expected.area_px, expected.bbox) == (28, (40, 5, 46, 8))
    assert found.class_id == 2


def test_a_frame_record_is_a_frame_identity() -> None:
    frame = _frame()
    assert isinstance(frame, FrameIdentity)
    assert frame.identity_fields() == {
        "frame_id": "f1", "line_id": "L1", "camera_id": "C1", "coil_id": "K1",
        "position_m": 3.5, "captured_at": T0,
    }  # fmt: skip


def test_severity_follows_its_definition() -> None:
    areas = (200, 200, 400, 2000)
    # Below full scale the area term is area / (SEVERITY_FULL_SCALE * alarm area of the class).
    assert severity(0.5, 400, 1, areas) == pytest.approx(0.5 * 400 / (SEVERITY_FULL_SCALE * 200))
    assert severity(0.5, 400, 4, areas) == pytest.approx(0.5 * 400 / (SEVERITY_FULL_SCALE * 2000))
    # Saturates at the probability once the defect is SEVERITY_FULL_SCALE alarm areas or larger.
    assert severity(0.9, SEVERITY_FULL_SCALE * 400, 3, areas) == pytest.approx(0.9)
    assert severity(0.9, 10**6, 3, areas) == pytest.approx(0.9)
    # A class beyond the table (another model) uses the largest alarm area.
    assert severity(1.0, 2000, 7, areas) == pytest.approx(2000 / (SEVERITY_FULL_SCALE * 2000))


def test_severity_is_bounded_and_monotone() -> None:
    areas = (200, 200, 400, 2000)
    values = [
        severity(p, a, c, areas) for p in (0.0, 0.3, 1.0) for a in (1, 500, 10**5) for c in (1, 2, 3, 4)
    ]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert severity(0.6, 300, 2, areas) < severity(0.6, 600, 2, areas) < severity(0.9, 600, 2, areas)


def test_records_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _frame().frame_id = "other"  # type: ignore[misc]
