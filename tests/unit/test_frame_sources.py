"""Line arithmetic, schedule, identifiers and the synthetic / replay sources (no services)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from producers.frame_sources import (
    CameraSpec,
    FrameClock,
    GainChange,
    LineGeometry,
    ReplaySource,
    SyntheticSource,
    check_id,
    coil_id,
    discover_replay,
    frame_id,
)
from producers.synthetic_camera import SyntheticCamera
from steelcore import rle
from steelcore.frame_message import decode_frame, encode_frame
from steelcore.kaggle_csv import read_labels
from steelcore.paths import SEVERSTAL_SAMPLE_DIR

T0 = datetime(2025, 5, 1, 6, 30, 0, 250000, tzinfo=UTC)


def spec(fps: float = 4.0, speed: float = 2.0, coil: float = 10.0, camera: str = "top") -> CameraSpec:
    return CameraSpec("L7", camera, LineGeometry(fps, speed, coil), T0)


# --- geometry ------------------------------------------------------------------------------------


def test_positions_advance_by_speed_over_fps_and_wrap_at_the_coil_length() -> None:
    geometry = LineGeometry(fps=4, speed_m_s=2, coil_length_m=10)  # 0.5 m per frame, 20 frames a coil
    assert geometry.frame_pitch_m == 0.5
    assert geometry.locate(0) == (0, 0.0)
    assert geometry.locate(1) == (0, 0.5)
    assert geometry.locate(19) == (0, 9.5)
    assert geometry.locate(20) == (1, 0.0)
    assert geometry.locate(41) == (2, 0.5)


@pytest.mark.parametrize(("fps", "speed", "coil"), [(10, 3, 0.3), (3, 1, 1 / 3), (7, 0.7, 0.1), (25, 1.5, 6)])
def test_a_coil_starts_exactly_on_its_boundary_frame_despite_float_error(
    fps: float, speed: float, coil: float
) -> None:
    geometry = LineGeometry(fps, speed, coil)
    frames_per_coil = round(coil * fps / speed)
    for index in range(0, 50 * frames_per_coil, frames_per_coil):
        number, position = geometry.locate(index)
        assert number == index // frames_per_coil
        assert position == pytest.approx(0.0, abs=1e-9)
        assert geometry.locate(index + frames_per_coil - 1)[0] == number or frames_per_coil == 1


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_geometry_rejects_non_positive_or_non_finite_values(bad: float) -> None:
    for args in ((bad, 1, 1), (1, bad, 1), (1, 1, bad)):
        with pytest.raises(ValueError, match="positive finite"):
            LineGeometry(*args)


def test_negative_frame_index_is_rejected() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        LineGeometry(1, 1, 1).locate(-1)


# --- identifiers and headers ---------------------------------------------------------------------


def test_frame_ids_are_unique_per_line_camera_run_and_sequence() -> None:
    ids = {
        frame_id(line, cam, run, seq)
        for line in ("L1", "L2")
        for cam in ("top", "bottom")
        for run in (1_700_000_000_000, 1_700_000_000_001)
        for seq in range(50)
    }
    assert len(ids) == 2 * 2 * 2 * 50
    assert frame_id("L1", "top", 1_700_000_000_000, 7) == "L1-top-1700000000000-00000007"


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "x" * 41, "tab\t"])
def test_line_and_camera_ids_must_be_safe_inside_frame_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="camera_id"):
        check_id("camera_id", bad)


def test_header_carries_schedule_position_and_coil_and_survives_the_wire() -> None:
    camera = spec()
    header = camera.header(41, "png", camera.scheduled_at(41))
    assert header.frame_id == f"L7-top-{int(T0.timestamp() * 1000)}-00000041"
    assert header.coil_id == coil_id("L7", T0, 2) == "L7-20250501T063000Z-0002"
    assert header.position_m == 0.5
    assert header.captured_at == T0 + timedelta(seconds=41 / 4)
    decoded = decode_frame(encode_frame(header, b"\x89PNG..."))
    assert decoded.header == header


def test_two_cameras_of_one_run_see_the_same_coils() -> None:
    top, bottom = spec(camera="top"), spec(camera="bottom")
    for index in (0, 19, 20, 400):
        a = top.header(index, "jpeg", top.scheduled_at(index))
        b = bottom.header(index, "jpeg", bottom.scheduled_at(index))
        assert a.coil_id == b.coil_id and a.position_m == b.position_m and a.frame_id != b.frame_id


# --- schedule ------------------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock and a stop event whose wait() advances the clock instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.stopped = False

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.now += seconds
        return self.stopped

    def is_set(self) -> bool:
        return self.stopped


def test_frame_clock_has_no_drift_when_work_takes_time() -> None:
    fake = FakeTime()
    clock = FrameClock(10.0, clock=fake)
    work = [0.03, 0.08, 0.01, 0.099, 0.05]  # each below the 0.1 s period
    for index in range(1000):
        lateness = clock.wait(index, fake)  # type: ignore[arg-type]
        assert lateness == pytest.approx(0.0)
        assert fake.now == pytest.approx(1000.0 + index / 10.0)
        fake.now += work[index % len(work)]
    # A per-frame sleep of 1/fps after the work would end ~54 s late; the absolute schedule ends on time.
    assert clock.due(1000) == pytest.approx(1100.0)


def test_frame_clock_reports_lateness_and_catches_up_without_sleeping() -> None:
    fake = FakeTime()
    clock = FrameClock(4.0, clock=fake)
    fake.now += 1.1  # stalled: frames 0..4 are due by now
    assert clock.wait(0, fake) == pytest.approx(1.1)  # type: ignore[arg-type]
    assert clock.wait(4, fake) == pytest.approx(0.1)  # type: ignore[arg-type]
    assert fake.now == pytest.approx(1001.1)  # caught up without sleeping
    assert clock.wait(5, fake) == 0.0  # type: ignore[arg-type]
    assert fake.now == pytest.approx(1001.25)


# --- sources -------------------------------------------------------------------------------------


def test_synthetic_source_is_deterministic_and_its_truth_is_the_exact_masks() -> None:
    source = SyntheticSource(spec(), seed=3)
    first, again = source.frame(5), SyntheticSource(spec(), seed=3).frame(5)
    assert np.array_equal(first.pixels, again.pixels)
    assert first.pixels.shape == (256, 1600) and first.pixels.dtype == np.uint8
    expected = SyntheticCamera(seed=3).frame(5).masks
    assert first.truth is not None
    assert np.array_equal(rle.decode_stack(first.truth), expected)
    assert source.count is None


def test_replay_of_a_kaggle_dataset_carries_its_labels(tmp_path: Path) -> None:
    items = discover_replay(SEVERSTAL_SAMPLE_DIR)
    labels = read_labels(SEVERSTAL_SAMPLE_DIR / "train.csv")
    names = sorted(p.name for p in (SEVERSTAL_SAMPLE_DIR / "images").iterdir())
    assert [i.path.name for i in items] == names
    source = ReplaySource(spec(), items)
    for index, name in enumerate(names):
        frame = source.frame(index)
        assert frame.source_ref == name
        assert frame.truth == tuple(labels.get(name, [""] * 4))
        assert frame.pixels.shape == (256, 1600)
    assert any(any(t) for t in (source.frame(i).truth or () for i in range(len(names))))
    assert source.frame(len(names)).source_ref == names[0]  # cycles


def test_replay_of_a_plain_folder_has_no_truth_and_checks_the_frame_size(tmp_path: Path) -> None:
    shutil.copy(next((SEVERSTAL_SAMPLE_DIR / "images").glob("*.jpg")), tmp_path / "a.jpg")
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((200, 200), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    source = ReplaySource.from_folder(spec(), tmp_path)
    assert source.count == 2 and not source.has_truth
    assert source.frame(0).truth is None
    with pytest.raises(ValueError, match=r"b\.png is 200x200"):
        source.frame(1)


def test_replay_rejects_a_folder_without_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        discover_replay(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        discover_replay(tmp_path / "missing")
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(ValueError, match="no image folder"):
        discover_replay(tmp_path)


def test_the_run_start_is_read_back_from_a_frame_id() -> None:
    from producers.frame_sources import frame_id, frame_run_start_ms

    assert frame_run_start_ms(frame_id("L-1", "top-2", 1_714_000_000_123, 7)) == 1_714_000_000_123
    for bad in ("garbage", "L1-cam-x-00000001", "L1-cam-123-"):
        with pytest.raises(ValueError, match="not a camera frame id"):
            frame_run_start_ms(bad)


def test_a_gain_change_dims_frames_from_its_index_on_and_keeps_the_truth() -> None:
    source = SyntheticSource(spec(), seed=3)
    dimmed = GainChange(source, gain=0.5, offset=-5.0, after=2)
    before, after = dimmed.frame(1), dimmed.frame(2)
    np.testing.assert_array_equal(before.pixels, source.frame(1).pixels)
    original = source.frame(2)
    expected = np.clip(original.pixels.astype(np.float32) * 0.5 - 5.0, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(after.pixels, expected)
    assert after.truth == original.truth and dimmed.count is None and dimmed.spec is source.spec
    with pytest.raises(ValueError, match="gain"):
        GainChange(source, gain=-1.0)
    ends = GainChange(source, gain=0.5, after=1, until=3)
    np.testing.assert_array_equal(ends.frame(3).pixels, source.frame(3).pixels)
    assert ends.frame(2).pixels.mean() < 0.6 * source.frame(2).pixels.mean()
    with pytest.raises(ValueError, match="end after"):
        GainChange(source, after=3, until=3)


def test_steel_produce_options_dim_the_cameras_for_a_span_of_frames() -> None:
    import argparse

    from producers.produce_cli import add_arguments, build_sources

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    plain = build_sources(parser.parse_args(["--camera", "a", "--camera", "b"]), T0)
    assert all(isinstance(s, SyntheticSource) for s in plain)
    args = parser.parse_args(["--camera", "a", "--gain", "0.5", "--change-after", "2", "--change-until", "4"])
    (dimmed,) = build_sources(args, T0)
    assert isinstance(dimmed, GainChange) and (dimmed.gain, dimmed.after, dimmed.until) == (0.5, 2, 4)
    with pytest.raises(ValueError, match="end after"):
        build_sources(parser.parse_args(["--gain", "0.5", "--change-after", "4", "--change-until", "4"]), T0)
