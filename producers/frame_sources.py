"""Frame sources: the pictures a camera publishes, with where and when each was taken.

A camera watches a strip moving at ``speed_m_s`` and takes ``fps`` frames a second, so frame
``i`` of a run shows the strip ``i * speed / fps`` metres after the run started; every
``coil_length_m`` metres a new coil begins. :class:`LineGeometry` holds that arithmetic and
:class:`FrameClock` the schedule (frame ``i`` is due ``i / fps`` seconds after the start, an
absolute schedule, so sleeping late once never shifts the later frames).

Two sources give the pixels: :class:`SyntheticSource` (the seeded synthetic camera, with exact
ground-truth masks) and :class:`ReplaySource` (a folder of images, or a Kaggle-format dataset
whose ``train.csv`` supplies the ground truth).

Identifiers (see :func:`frame_id` and :func:`coil_id`): a frame is
``{line}-{camera}-{run_start_ms}-{seq:08d}``, unique across lines, cameras and runs without any
coordination, stable for a given publish (a producer retry carries the same id, which is what
makes the worker's writes idempotent), sortable per camera, and readable in a log line.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from steelcore import rle
from steelcore.frame_message import MAX_ID_CHARS, Encoding, FrameHeader
from steelcore.kaggle_csv import IMAGE_DIRS, IMAGE_SUFFIXES, LABELS_FILE, find_image_dir, read_labels
from steelcore.severstal import FRAME_HEIGHT, FRAME_SHAPE, FRAME_WIDTH, NUM_CLASSES

# Where a Kaggle-layout dataset keeps its images (the same names training.datasets accepts).
# Boundary tolerance of the coil arithmetic: float error must not start a coil one frame late.
_COIL_EPSILON = 1e-9


# --- identifiers ---------------------------------------------------------------------------------


def check_id(name: str, value: str) -> str:
    """A line or camera id usable inside frame and coil ids: printable, no spaces or '/'."""
    if not isinstance(value, str) or not value or not value.isprintable() or any(c in value for c in " /"):
        raise ValueError(f"{name} must be a non-empty printable string without spaces or '/', got {value!r}")
    if len(value) > 40:
        raise ValueError(f"{name} {value!r} is longer than 40 characters")
    return value


def frame_id(line_id: str, camera_id: str, run_start_ms: int, seq: int) -> str:
    """``{line}-{camera}-{run_start_ms}-{seq:08d}``: unique per run, stable per publish."""
    if seq < 0 or run_start_ms < 0:
        raise ValueError(f"seq and run_start_ms must be >= 0, got {seq}, {run_start_ms}")
    value = f"{line_id}-{camera_id}-{run_start_ms}-{seq:08d}"
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"frame id {value!r} exceeds {MAX_ID_CHARS} characters")
    return value


def frame_run_start_ms(value: str) -> int:
    """The run start (epoch ms) inside a frame id made by :func:`frame_id`; ValueError otherwise."""
    parts = value.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"not a camera frame id: {value!r}")
    return int(parts[1])


def coil_id(line_id: str, run_start: datetime, coil_index: int) -> str:
    """``{line}-{run start, UTC seconds}-{coil:04d}``: every camera of a run sees the same coil id."""
    if coil_index < 0:
        raise ValueError(f"coil_index must be >= 0, got {coil_index}")
    return f"{line_id}-{run_start.astimezone(UTC):%Y%m%dT%H%M%SZ}-{coil_index:04d}"


# --- line arithmetic -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LineGeometry:
    """Frame rate, strip speed and coil length of one line."""

    fps: float
    speed_m_s: float
    coil_length_m: float

    def __post_init__(self) -> None:
        for name in ("fps", "speed_m_s", "coil_length_m"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")

    @property
    def frame_pitch_m(self) -> float:
        """Strip length that passes the camera between two frames."""
        return self.speed_m_s / self.fps

    def distance_m(self, index: int) -> float:
        """Strip travelled from the run's start to frame ``index``."""
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        # Multiply before dividing: exact for the common integer fps and speeds.
        return index * self.speed_m_s / self.fps

    def locate(self, index: int) -> tuple[int, float]:
        """(coil index, position in metres from that coil's head) of frame ``index``."""
        distance = self.distance_m(index)
        coil = math.floor(distance / self.coil_length_m + _COIL_EPSILON)
        return coil, max(0.0, distance - coil * self.coil_length_m)

    def offset_s(self, index: int) -> float:
        """Seconds from the run's start at which frame ``index`` is due."""
        return index / self.fps


@dataclass(frozen=True)
class CameraSpec:
    """One camera of a run: the line it watches and when the run began (UTC)."""

    line_id: str
    camera_id: str
    geometry: LineGeometry
    run_start: datetime

    def __post_init__(self) -> None:
        check_id("line_id", self.line_id)
        check_id("camera_id", self.camera_id)
        if self.run_start.tzinfo is None:
            raise ValueError("run_start must carry a time zone")

    @property
    def run_start_ms(self) -> int:
        return int(self.run_start.timestamp() * 1000)

    def scheduled_at(self, index: int) -> datetime:
        """Capture time of frame ``index`` on the nominal schedule."""
        return self.run_start + timedelta(seconds=self.geometry.offset_s(index))

    def header(self, index: int, encoding: Encoding, captured_at: datetime) -> FrameHeader:
        coil, position = self.geometry.locate(index)
        return FrameHeader(
            frame_id=frame_id(self.line_id, self.camera_id, self.run_start_ms, index),
            line_id=self.line_id,
            camera_id=self.camera_id,
            coil_id=coil_id(self.line_id, self.run_start, coil),
            position_m=round(position, 6),
            captured_at=captured_at.astimezone(UTC),
            encoding=encoding,
            width=FRAME_WIDTH,
            height=FRAME_HEIGHT,
        )


class FrameClock:
    """Absolute frame schedule: frame ``i`` is due at ``start + i / fps`` (monotonic clock).

    Waiting for a frame sleeps until its due time, never for a fixed period, so time lost to
    one slow frame is made up by the next ones instead of accumulating as drift.
    """

    def __init__(
        self,
        fps: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        start: float | None = None,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self._clock = clock
        self.start = clock() if start is None else start

    def due(self, index: int) -> float:
        return self.start + index / self.fps

    def delay(self, index: int) -> float:
        """Seconds until frame ``index`` is due; negative when it is late."""
        return self.due(index) - self._clock()

    def wait(self, index: int, stop: threading.Event) -> float:
        """Sleep until frame ``index`` is due or ``stop`` is set; returns the lateness in seconds (>= 0)."""
        delay = self.delay(index)
        if delay > 0:
            stop.wait(delay)
        return max(0.0, -self.delay(index))


# --- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFrame:
    """The pixels of frame ``index`` of a camera, and its ground truth when the source knows it."""

    index: int
    pixels: np.ndarray  # uint8 [256, 1600]
    truth: tuple[str, ...] | None  # one RLE per class ('' = none); None = unknown
    source_ref: str  # synthetic image id or replayed file name


class FrameSource(Protocol):
    spec: CameraSpec

    @property
    def count(self) -> int | None:
        """Frames in one pass (None = endless)."""
        ...

    def frame(self, index: int) -> SourceFrame: ...


class SyntheticSource:
    """The synthetic camera (producers.synthetic_camera): frame ``i`` of a seed is always the same."""

    def __init__(self, spec: CameraSpec, seed: int) -> None:
        from producers.synthetic_camera import SyntheticCamera

        self.spec = spec
        self.camera = SyntheticCamera(seed=seed)

    @property
    def count(self) -> int | None:
        return None

    def frame(self, index: int) -> SourceFrame:
        synth = self.camera.frame(index)
        return SourceFrame(index, synth.image, tuple(rle.encode_stack(synth.masks)), synth.image_id)


class GainChange:
    """Another source whose camera changes for frames ``after`` <= index < ``until`` (None: for
    good): pixels times ``gain`` plus ``offset`` gray levels, as a dimming lamp or a new exposure
    setting would. The ground truth is unchanged (the defects are still there); this is how the
    drift alarms are exercised."""

    def __init__(
        self,
        source: FrameSource,
        *,
        gain: float = 1.0,
        offset: float = 0.0,
        after: int = 0,
        until: int | None = None,
    ) -> None:
        if not (math.isfinite(gain) and gain >= 0 and math.isfinite(offset)) or after < 0:
            raise ValueError(
                f"gain must be >= 0, offset finite and after >= 0; got {gain}, {offset}, {after}"
            )
        if until is not None and until <= after:
            raise ValueError(f"the change must end after it starts; got frames {after} to {until}")
        self.source, self.gain, self.offset, self.after, self.until = source, gain, offset, after, until
        self.spec = source.spec

    @property
    def count(self) -> int | None:
        return self.source.count

    def frame(self, index: int) -> SourceFrame:
        frame = self.source.frame(index)
        if index < self.after or (self.until is not None and index >= self.until):
            return frame
        pixels = np.clip(frame.pixels.astype(np.float32) * self.gain + self.offset, 0, 255).astype(np.uint8)
        return SourceFrame(frame.index, pixels, frame.truth, frame.source_ref)


@dataclass(frozen=True)
class ReplayItem:
    path: Path
    truth: tuple[str, ...] | None


def discover_replay(folder: Path) -> list[ReplayItem]:
    """The images to replay, sorted by name; with ground truth for a Kaggle-format dataset
    (``train.csv`` beside ``train_images/`` or ``images/``: an image without a row is defect-free)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"replay folder {folder} does not exist")
    labels: dict[str, list[str]] | None = None
    image_dir = folder
    if (folder / LABELS_FILE).is_file():
        found = find_image_dir(folder)
        if found is None:
            raise ValueError(f"{folder} has {LABELS_FILE} but no image folder ({' or '.join(IMAGE_DIRS)})")
        image_dir = found
        labels = read_labels(folder / LABELS_FILE, validate_shape=FRAME_SHAPE)
    paths = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    empty = ("",) * NUM_CLASSES
    return [ReplayItem(p, None if labels is None else tuple(labels.get(p.name, empty))) for p in paths]


class ReplaySource:
    """Replays a folder of 1600x256 images in name order, cycling when asked for more frames."""

    def __init__(self, spec: CameraSpec, items: Sequence[ReplayItem]) -> None:
        if not items:
            raise ValueError("nothing to replay")
        self.spec = spec
        self.items = list(items)

    @classmethod
    def from_folder(cls, spec: CameraSpec, folder: Path) -> ReplaySource:
        return cls(spec, discover_replay(folder))

    @property
    def count(self) -> int | None:
        return len(self.items)

    @property
    def has_truth(self) -> bool:
        return self.items[0].truth is not None

    def frame(self, index: int) -> SourceFrame:
        item = self.items[index % len(self.items)]
        pixels = cv2.imread(str(item.path), cv2.IMREAD_GRAYSCALE)
        if pixels is None:
            raise ValueError(f"cannot read image {item.path}")
        if pixels.shape != FRAME_SHAPE:
            raise ValueError(
                f"{item.path} is {pixels.shape[1]}x{pixels.shape[0]}; the cameras publish "
                f"{FRAME_WIDTH}x{FRAME_HEIGHT} frames"
            )
        return SourceFrame(index, pixels, item.truth, item.path.name)
