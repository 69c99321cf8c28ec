"""The batch a worker has in hand: messages decoded and validated, offsets to commit, and the
records and alarms made from the ensemble's answer. Pure logic, no I/O."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from steelcore import rle
from steelcore.alarm_message import Alarm
from steelcore.frame_message import FrameHeader, FrameMessageError, decode_frame, decode_image
from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord, StoreResult
from steelcore.severstal import CLASS_IDS, FRAME_HEIGHT, FRAME_WIDTH, NUM_CLASSES
from steelcore.triton.inference_result import EnsembleResult
from workers.alarm_rules import AlarmRule, alarms_for_frame

log = logging.getLogger(__name__)


def next_offsets(messages: Sequence[Any]) -> dict[tuple[str, int], int]:
    """Offsets to commit for a batch: per (topic, partition), the highest offset + 1."""
    out: dict[tuple[str, int], int] = {}
    for message in messages:
        if message.error() is not None:
            continue
        key = (message.topic(), message.partition())
        out[key] = max(out.get(key, 0), message.offset() + 1)
    return out


@dataclass(frozen=True)
class ValidFrame:
    message: Any
    header: FrameHeader
    pixels: np.ndarray  # uint8 [256, 1600]
    decode_s: float
    image: bytes = b""  # the received encoded image, kept by the store for defective frames


@dataclass(frozen=True)
class Rejected:
    message: Any
    reason: str


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the image size); C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def declared_size(image: bytes, encoding: str) -> tuple[int, int] | None:
    """(width, height) an encoded image declares in its own header, read without decoding it;
    None for raw pixels. FrameMessageError when a JPEG or PNG does not say.

    A few hundred kilobytes of PNG or JPEG can declare 16000 x 16000 pixels: decoding first and
    comparing after would allocate 256 MB for one frame (a batch of them kills the worker, and
    the redelivered batch kills the next one). So the declared size is checked first.
    """
    if encoding == "png":
        if image[:8] != _PNG_SIGNATURE or image[12:16] != b"IHDR" or len(image) < 24:
            raise FrameMessageError("image bytes are not a PNG (no IHDR header)")
        width, height = struct.unpack(">II", image[16:24])
        return width, height
    if encoding != "jpeg":
        return None
    if image[:2] != b"\xff\xd8":
        raise FrameMessageError("image bytes are not a JPEG (no start-of-image marker)")
    pos = 2
    while pos + 4 <= len(image):
        if image[pos] != 0xFF:
            break
        marker = image[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            break
        (length,) = struct.unpack(">H", image[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= len(image):
            height, width = struct.unpack(">HH", image[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise FrameMessageError("image bytes are not a readable JPEG (no frame header before the scan)")


def validate_message(
    message: Any, max_bytes: int, *, max_ahead_s: float | None = None, now: datetime | None = None
) -> ValidFrame | Rejected:
    """Decode a frame message and check it fits the ensemble; a Rejected says why not.

    ``max_ahead_s``: how far ``captured_at`` may lie ahead of ``now`` (default: the current time).
    Never raises: whatever bytes arrive, the answer is a frame or a reason (a message that made
    the worker raise would crash every worker that is assigned its partition in turn)."""
    started = time.perf_counter()
    try:
        frame = decode_frame(message.value(), max_bytes=max_bytes)
        if max_ahead_s is not None:
            ahead = (frame.header.captured_at - (now or datetime.now(UTC))).total_seconds()
            if ahead > max_ahead_s:
                raise FrameMessageError(
                    f"captured_at {frame.header.captured_at.isoformat()} is {ahead:.0f} s ahead of the "
                    f"worker's clock (at most {max_ahead_s:g} s allowed): is the camera clock wrong?"
                )
        # Checked before decoding, so a frame of another size never costs a full image decode;
        # decode_image then holds the pixels to the header.
        if (frame.header.height, frame.header.width) != (FRAME_HEIGHT, FRAME_WIDTH):
            raise FrameMessageError(
                f"frame is {frame.header.width}x{frame.header.height}; the ensemble takes "
                f"{FRAME_WIDTH}x{FRAME_HEIGHT}"
            )
        size = declared_size(frame.image, frame.header.encoding)
        if size is not None and size != (FRAME_WIDTH, FRAME_HEIGHT):
            raise FrameMessageError(
                f"the {frame.header.encoding} image declares {size[0]}x{size[1]}, header says "
                f"{FRAME_WIDTH}x{FRAME_HEIGHT} (not decoded)"
            )
        pixels = decode_image(frame)
    except FrameMessageError as exc:
        return Rejected(message, exc.reason)
    except Exception as exc:  # a validation bug: dead-letter the one message, keep the worker up
        log.exception("validating %s", _where(message))
        return Rejected(
            message, f"unexpected error validating the message: {type(exc).__name__}: {exc}"[:500]
        )
    return ValidFrame(message, frame.header, pixels, time.perf_counter() - started, frame.image)


def _where(message: Any) -> str:
    try:
        return f"{message.topic()}[{message.partition()}]@{message.offset()}"
    except Exception:  # only for a log line
        return "a message"


def defects_of(probs: Sequence[float], rles: Sequence[str]) -> list[DefectRecord]:
    """One DefectRecord per class with a non-empty mask (area and bounding box from its runs)."""
    found = []
    for k, class_id in enumerate(CLASS_IDS):
        if not rles[k]:
            continue
        box = rle.area_and_box(rles[k])
        if box is not None:
            area, bbox = box
            found.append(DefectRecord(class_id, rles[k], area, bbox, float(probs[k])))
    return found


def build_records(
    frames: Sequence[ValidFrame],
    result: EnsembleResult,
    rule: AlarmRule,
    *,
    received_at: datetime,
    infer_s: float,
    model_name: str,
    model_version: str,
    labels: Sequence[tuple[str, str]] | None = None,
) -> tuple[list[FrameRecord], list[Alarm], list[Rejected]]:
    """Frame records (with defects and alarm rows) and the alarms to publish; a frame whose result
    cannot be stored (e.g. a probability outside [0, 1]) is rejected instead.

    ``labels``: (model_name, model_version) per frame, from the version that judged each one; without
    them every frame carries ``model_name`` and ``model_version``."""
    if result.probs.shape != (len(frames), NUM_CLASSES) or len(result.rles) != len(frames):
        raise RuntimeError(
            f"ensemble answered {result.probs.shape} for {len(frames)} frames of {NUM_CLASSES} classes"
        )
    if labels is None:
        labels = [(model_name, model_version)] * len(frames)
    elif len(labels) != len(frames):
        raise RuntimeError(f"{len(labels)} model labels for {len(frames)} frames")
    records: list[FrameRecord] = []
    alarms: list[Alarm] = []
    rejects: list[Rejected] = []
    for frame, probs, rles, (name, version) in zip(
        frames, result.probs.tolist(), result.rles, labels, strict=True
    ):
        h = frame.header
        try:
            defects = defects_of(probs, rles)
            areas = [0] * NUM_CLASSES
            for d in defects:
                areas[d.class_id - 1] = d.area_px
            fired = alarms_for_frame(rule, h, probabilities=probs, areas_px=areas)
            record = FrameRecord(
                **h.identity_fields(),
                received_at=received_at,
                model_name=name,
                model_version=version,
                defects=tuple(defects),
                alarms=tuple(AlarmRecord(a.class_id, a.probability, a.area_px, received_at) for a in fired),
                class_probs=tuple(probs),
                decode_ms=frame.decode_s * 1000.0,
                infer_ms=infer_s * 1000.0,
                height=h.height,
                width=h.width,
                image=frame.image or None,
                image_encoding=h.encoding,
            )
        except ValueError as exc:
            rejects.append(Rejected(frame.message, f"inference result not storable: {exc}"))
            continue
        records.append(record)
        alarms.extend(fired)
    return records, alarms, rejects


@dataclass
class Batch:
    """What is done of a batch, so a retry after an outage resumes at the step that failed."""

    messages: list[Any]
    received_at: datetime
    rebalances_at_consume: int
    # The broker log the worker believed it was reading when the batch was consumed (a counter
    # the worker bumps when the embedded broker restarts): offsets of another log are never committed.
    log_epoch: int = 0
    valid: list[ValidFrame] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records: list[FrameRecord] | None = None  # None until inferred
    sources: list[Any] = field(default_factory=list)  # the message of each record, in order
    alarms: list[Alarm] = field(default_factory=list)
    dead_letters_pending: list[Rejected] | None = None
    stored: StoreResult | None = None
    alarm_entries: list[str] | None = None
    alarms_marked_published: bool = False
    committed: bool = False
    # Triton's answer, requested before the batch's turn (WorkerConfig.infer_ahead); taken by the
    # infer step, which asks again after an outage. requested_at: perf_counter of that request.
    inference: Future[EnsembleResult] | None = None
    requested_at: float = 0.0

    def oldest_lag_s(self) -> float:
        """Seconds from the capture of the batch's oldest valid frame to now (it has one)."""
        oldest = min(f.header.captured_at for f in self.valid)
        return (datetime.now(UTC) - oldest).total_seconds()
