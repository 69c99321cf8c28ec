"""What the worker stores about a frame: the records DefectStore writes, checked on construction so
a record that could not be stored (a naive timestamp, a probability outside [0, 1], an RLE longer
than any mask of its frame) fails in the worker, where it is rejected alone, not in the batch's
transaction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from steelcore.frame_message import FrameIdentity
from steelcore.postgres.frame_images import image_encoding
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

if TYPE_CHECKING:
    import numpy as np

MaskBox = tuple[int, int, int, int]  # x0, y0, x1, y1: inclusive pixel bounds of a mask


def max_rle_chars(height: int, width: int) -> int:
    """The longest RLE string a height x width mask can need (every other pixel set: one
    "start length" pair per pixel pair). A longer string cannot describe a mask of that frame,
    so the store refuses it instead of writing megabytes of text into a row."""
    pixels = height * width
    digits = len(str(pixels))
    return (pixels + 1) // 2 * (2 * digits + 2)


def mask_box(mask: np.ndarray) -> tuple[int, MaskBox] | None:
    """(area in pixels, bounding box) of a 2-D mask; None when the mask is empty."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.size), (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def require_aware(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be timezone-aware (got naive {value.isoformat()})")


def _require_probability(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be within [0, 1], got {value}")


@dataclass(frozen=True)
class DefectRecord:
    """One detected defect class on a frame (the union of that class's mask regions)."""

    class_id: int
    rle: str  # steelcore.rle encoding of the class mask at the frame's size
    area_px: int
    bbox: MaskBox
    probability: float

    def __post_init__(self) -> None:
        if self.class_id < 1:
            raise ValueError(f"class_id must be >= 1, got {self.class_id}")
        if self.area_px <= 0:
            raise ValueError(f"area_px must be positive, got {self.area_px} (class {self.class_id})")
        if not self.rle.strip():
            raise ValueError(f"rle is empty for a defect of class {self.class_id}")
        x0, y0, x1, y1 = self.bbox
        if not (0 <= x0 <= x1 and 0 <= y0 <= y1):
            raise ValueError(f"bbox must satisfy 0 <= x0 <= x1 and 0 <= y0 <= y1, got {self.bbox}")
        _require_probability("probability", self.probability)

    @classmethod
    def from_mask(cls, class_id: int, mask: np.ndarray, probability: float) -> DefectRecord | None:
        """The record of a 2-D class mask; None when the mask is empty."""
        from steelcore.rle import encode

        box = mask_box(mask)
        if box is None:
            return None
        area, bbox = box
        return cls(class_id, encode(mask), area, bbox, float(probability))


@dataclass(frozen=True)
class AlarmRecord:
    """An alarm fired for one (frame, class); the frame must carry a defect of that class."""

    class_id: int
    probability: float
    area_px: int
    raised_at: datetime
    # Set when the alarm was published to the Redis stream before this write; else NULL = outbox.
    stream_entry_id: str | None = None
    published_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_probability("alarm probability", self.probability)
        require_aware("raised_at", self.raised_at)
        require_aware("published_at", self.published_at)


@dataclass(frozen=True)
class FrameRecord(FrameIdentity):
    """Everything stored about one inferred frame."""

    received_at: datetime
    model_name: str
    model_version: str
    defects: tuple[DefectRecord, ...] = ()
    alarms: tuple[AlarmRecord, ...] = ()
    class_probs: tuple[float, ...] | None = None  # index 0 = class 1; None without a classifier
    decode_ms: float | None = None
    infer_ms: float | None = None
    store_ms: float | None = None
    image_ref: str | None = None
    height: int = FRAME_HEIGHT
    width: int = FRAME_WIDTH
    # The received image bytes (JPEG as in the Kafka message, never re-encoded). Kept in
    # frame_images when the frame has a defect; ignored for a defect-free frame.
    image: bytes | None = field(default=None, repr=False)
    # The encoding the frame header declared (the worker decoded the image by it); None = tell it
    # from the bytes, for records made without a header.
    image_encoding: str | None = None

    def __post_init__(self) -> None:
        for name in ("frame_id", "line_id", "camera_id", "coil_id", "model_name", "model_version"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string")
        if not self.position_m >= 0:
            raise ValueError(f"position_m must be >= 0, got {self.position_m} (frame {self.frame_id})")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"frame size must be positive, got {self.height}x{self.width}")
        require_aware("captured_at", self.captured_at)
        require_aware("received_at", self.received_at)
        class_ids = [d.class_id for d in self.defects]
        if len(set(class_ids)) != len(class_ids):
            raise ValueError(f"frame {self.frame_id} has two defects of one class: {class_ids}")
        rle_limit = max_rle_chars(self.height, self.width)
        for d in self.defects:
            if len(d.rle) > rle_limit or d.area_px > self.height * self.width:
                raise ValueError(
                    f"frame {self.frame_id}: class {d.class_id} mask ({len(d.rle)} RLE characters, "
                    f"{d.area_px} px) cannot belong to a {self.width}x{self.height} frame "
                    f"(at most {rle_limit} characters)"
                )
            if d.bbox[2] >= self.width or d.bbox[3] >= self.height:
                raise ValueError(
                    f"frame {self.frame_id}: class {d.class_id} bbox {d.bbox} "
                    f"outside {self.width}x{self.height}"
                )
        alarmed_class_ids = [a.class_id for a in self.alarms]
        if len(set(alarmed_class_ids)) != len(alarmed_class_ids):
            raise ValueError(f"frame {self.frame_id} has two alarms of one class: {alarmed_class_ids}")
        missing = set(alarmed_class_ids) - set(class_ids)
        if missing:
            raise ValueError(f"frame {self.frame_id}: alarm for class {sorted(missing)} without a defect")
        for p in self.class_probs or ():
            _require_probability("class probability", p)
        if self.image is not None and self.defects:
            # raises ValueError when unusable
            image_encoding(self.image, self.height, self.width, self.image_encoding)

    @property
    def keeps_image(self) -> bool:
        """Whether the store keeps this frame's image (steelcore/postgres/frame_images.py has the policy)."""
        return self.image is not None and bool(self.defects)


@dataclass(frozen=True)
class StoreResult:
    new_frame_ids: tuple[str, ...]  # stored by this call, sorted
    duplicate_frame_ids: tuple[str, ...] = ()  # already stored (redelivery) or repeated in the batch
    defects_written: int = 0
    alarms_written: int = 0
    images_written: int = 0
    elapsed_ms: float = 0.0
    new_alarms: tuple[tuple[str, int], ...] = ()  # (frame_id, class_id) of the alarms written now


def merge_store_results(results: Sequence[StoreResult]) -> StoreResult:
    """One StoreResult for several writes of parts of a batch."""
    return StoreResult(
        new_frame_ids=tuple(sorted(f for r in results for f in r.new_frame_ids)),
        duplicate_frame_ids=tuple(f for r in results for f in r.duplicate_frame_ids),
        defects_written=sum(r.defects_written for r in results),
        alarms_written=sum(r.alarms_written for r in results),
        images_written=sum(r.images_written for r in results),
        elapsed_ms=sum(r.elapsed_ms for r in results),
        new_alarms=tuple(a for r in results for a in r.new_alarms),
    )
