"""What scripts/measure_row_bytes.py writes: real Severstal frames and defects, built into the
Kafka messages and FrameRecords a worker would produce."""

from __future__ import annotations

import itertools
import random
import statistics
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.report import time_callable
from steelcore.frame_message import (
    ENCODINGS,
    FrameHeader,
    decode_frame,
    decode_image,
    encode_frame,
    encode_image,
)
from steelcore.kaggle_csv import read_labels
from steelcore.rle import decode
from steelcore.settings import Settings
from steelcore.severstal import CLASS_NAMES, FRAME_SHAPE


@dataclass(frozen=True)
class RealDefects:
    """The defects of one real Severstal frame, as (class_id, RLE) pairs; decoded when used, since
    thousands of decoded 256x1600 masks would not fit in memory."""

    image_id: str
    rles: tuple[tuple[int, str], ...]


def load_frames(folder: Path) -> list[np.ndarray]:
    """The real frames as uint8 grey levels [256, 1600]."""
    paths = sorted(p for p in (folder / "images").iterdir() if p.suffix in (".jpg", ".png"))
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    usable = [f for f in frames if f is not None and f.shape == FRAME_SHAPE]
    if not usable:
        raise ValueError(f"no readable {FRAME_SHAPE[1]}x{FRAME_SHAPE[0]} frames in {folder / 'images'}")
    return usable


def load_defects(csv_path: Path) -> list[RealDefects]:
    """Every real frame of the label file that has at least one defect."""
    out = []
    for image_id, rles in read_labels(csv_path).items():
        present = tuple((k + 1, rle) for k, rle in enumerate(rles) if rle)
        if present:
            out.append(RealDefects(image_id, present))
    if not out:
        raise ValueError(f"no defects in {csv_path}")
    return out


def message_bytes(frames: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Kafka message value size (header + image) per encoding over the real frames, and the time
    a worker takes to parse and decode one (decode_frame + decode_image, one thread)."""
    header = FrameHeader(
        frame_id="L1-cam1-1767225600000-00000001",
        line_id="L1",
        camera_id="cam1",
        coil_id="L1-20260101T000000Z-0001",
        position_m=123.45,
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    result = {}
    for encoding in ENCODINGS:
        sizes = [
            len(encode_frame(replace(header, encoding=encoding), encode_image(f, encoding))) for f in frames
        ]
        messages = [
            encode_frame(replace(header, encoding=encoding), encode_image(f, encoding)) for f in frames
        ]
        timing = time_callable(_decoder(messages), warmup=4, repeats=40)
        result[encoding] = {
            "median": statistics.median(sizes),
            "min": min(sizes),
            "max": max(sizes),
            "decode_ms_median": round(timing.median_us / 1000, 3),
            "decode_ms_min": round(timing.min_us / 1000, 3),
        }
    return result


def _decoder(messages: Sequence[bytes]) -> Callable[[], object]:
    """What a worker does with each message before inference, over the messages in turn."""
    pending = itertools.cycle(messages)
    return lambda: decode_image(decode_frame(next(pending)))


def frame_records(
    count: int, defects: Sequence[RealDefects], images: Sequence[bytes], defective_share: float, seed: int
) -> Iterator[Any]:
    """FrameRecords as a worker would build them: every frame has class probabilities; a defective one
    carries a real frame's defects, an alarm per defect that passes the default alarm rule, and
    a real JPEG image."""
    from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord
    from workers.alarm_rules import AlarmRule

    rng = random.Random(seed)
    rule = AlarmRule.from_settings(Settings())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    real = itertools.cycle(defects)
    jpegs = itertools.cycle(images)
    run = uuid.uuid4().hex[:6]
    for seq in range(count):
        captured = start + timedelta(milliseconds=250 * seq)
        found: list[DefectRecord] = []
        alarms: list[AlarmRecord] = []
        if rng.random() < defective_share:
            for class_id, rle in next(real).rles:
                record = DefectRecord.from_mask(class_id, decode(rle), probability=rng.uniform(0.5, 1.0))
                if record is None:
                    continue
                found.append(record)
                if rule.fires(class_id - 1, record.probability, record.area_px):
                    alarms.append(
                        AlarmRecord(
                            class_id,
                            record.probability,
                            record.area_px,
                            captured,
                            stream_entry_id=f"{1767225600000 + seq}-0",
                            published_at=captured,
                        )
                    )
        yield FrameRecord(
            frame_id=f"L1-cam{seq % 4 + 1}-{run}-{seq:08d}",
            line_id="L1",
            camera_id=f"cam{seq % 4 + 1}",
            coil_id=f"L1-20260101T000000Z-{seq // 2000:04d}",
            position_m=round(0.25 * (seq % 2000), 2),
            captured_at=captured,
            received_at=captured + timedelta(milliseconds=30),
            model_name="default",
            model_version="steel_ensemble",
            defects=tuple(found),
            alarms=tuple(alarms),
            class_probs=tuple(rng.random() for _ in CLASS_NAMES),
            decode_ms=2.0,
            infer_ms=40.0,
            store_ms=5.0,
            image=next(jpegs) if found else None,
        )
