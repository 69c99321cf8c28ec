"""Operator-reviewed frames as a Kaggle-format dataset for retraining:
``train_images/<frame>.jpg`` plus ``train.csv`` (ImageId,ClassId,EncodedPixels), the layout
training.datasets.open_dataset reads.

Which frames: those whose every defect has an operator verdict (on the defect or on its alarm,
the latest one counting; steelcore.postgres.verdicts). Confirmed defects become rows of train.csv;
defects marked false become background, so a frame whose defects were all false is exported as a
defect-free image (a hard negative, which is what a retrained model most needs). A frame with a
defect nobody reviewed is skipped: leaving that defect out would teach the model it is
background. Frames whose image was not kept or already purged are skipped too, and so are frames
whose stored image does not decode (one bad image must not abort the whole export); the summary
counts each kind and names the bad images.

    from steelcore.retraining_export import export_retraining_dataset
    export_retraining_dataset(reader_engine, Path("data/reviewed"))

The dashboard's download builds the zip into a temporary file (``retraining_zip_file``), one
image at a time, so a large export is not held in memory while it is built.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import Engine

from steelcore.defect_export import submission_text
from steelcore.kaggle_csv import write_submission
from steelcore.postgres.frame_images import StoredImage, load_frame_image
from steelcore.postgres.frame_reads import FrameDetail, frame_details, frames_of_defects
from steelcore.postgres.verdicts import DefectVerdict, defect_verdicts

IMAGES_DIR = "train_images"
CSV_NAME = "train.csv"
JPEG_QUALITY = 95  # only for frames that arrived as PNG or raw pixels; JPEGs are copied as stored
_BATCH_FRAMES = 200
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RetrainingSummary:
    images: int  # frames written
    defect_rows: int  # confirmed defects in train.csv
    negatives: int  # of the images, frames whose every defect was marked false
    skipped_unreviewed: int  # frames with a defect that has no verdict
    skipped_no_image: int  # frames whose image was not kept or was purged
    truncated: bool = False  # max_frames reached before every reviewed frame was written
    skipped_bad_image: int = 0  # frames whose stored image does not decode
    bad_images: tuple[str, ...] = ()  # "frame_id: reason" of each, for the operator to look into


class _Sink(Protocol):
    def add_image(self, name: str, data: bytes) -> None: ...

    def add_csv(self, rows: Sequence[tuple[str, int, str]]) -> None: ...


def image_name(frame_id: str) -> str:
    """File name of a frame's image; ids with characters unsafe in file names get a hash suffix."""
    if _SAFE_NAME.fullmatch(frame_id) and not frame_id.startswith("."):
        return f"{frame_id}.jpg"
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", frame_id).lstrip(".")
    digest = hashlib.sha1(frame_id.encode("utf-8")).hexdigest()[:10]
    return f"{cleaned}-{digest}.jpg"


def export_retraining_dataset(
    reader: Engine,
    out_dir: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    max_frames: int | None = None,
) -> RetrainingSummary:
    """Write the reviewed frames captured in [since, until) under ``out_dir`` (created; must be
    empty or absent). Raises ValueError when ``out_dir`` already holds files."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose a new one")
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    return _export(reader, _DirSink(out), since, until, max_frames)


def write_retraining_zip(
    reader: Engine,
    out: BinaryIO,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    max_frames: int | None = None,
) -> RetrainingSummary:
    """Write the same dataset as a zip archive into the binary file ``out``, image by image: only
    one image is in memory at a time, never the archive."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        return _export(reader, _ZipSink(archive), since, until, max_frames)


def retraining_zip_file(
    reader: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    max_frames: int | None = None,
    tmp_dir: Path | None = None,
) -> tuple[BinaryIO, RetrainingSummary]:
    """The dataset as a zip archive in a temporary file (for a download button), opened for
    reading at its start. The file has no name left on disk: closing it frees the space."""
    fd, name = tempfile.mkstemp(prefix="steel-retraining-", suffix=".zip", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            summary = write_retraining_zip(reader, out, since=since, until=until, max_frames=max_frames)
        archive = open(name, "rb")
    finally:
        os.unlink(name)
    return archive, summary


def _export(
    reader: Engine,
    sink: _Sink,
    since: datetime | None,
    until: datetime | None,
    max_frames: int | None,
) -> RetrainingSummary:
    if max_frames is not None and max_frames <= 0:
        raise ValueError(f"max_frames must be positive or None, got {max_frames}")
    verdicts = defect_verdicts(reader)
    rows: list[tuple[str, int, str]] = []
    images = negatives = unreviewed = no_image = 0
    bad_images: list[str] = []
    truncated = False
    for detail in _reviewed_frames(reader, verdicts, since, until):
        if any(d.defect_id not in verdicts for d in detail.defects):
            unreviewed += 1
            continue
        if max_frames is not None and images >= max_frames:
            truncated = True
            break
        stored = load_frame_image(reader, detail.frame_id)
        if stored is None:
            no_image += 1
            continue
        try:
            data = _jpeg_bytes(stored)
        except ValueError as exc:
            bad_images.append(f"{detail.frame_id}: {exc}")
            continue
        name = image_name(detail.frame_id)
        sink.add_image(name, data)
        images += 1
        confirmed = [d for d in detail.defects if verdicts[d.defect_id].verdict == "confirmed"]
        negatives += not confirmed
        rows.extend((name, d.class_id, d.rle) for d in confirmed)
    sink.add_csv(rows)
    return RetrainingSummary(
        images, len(rows), negatives, unreviewed, no_image, truncated, len(bad_images), tuple(bad_images)
    )


def _reviewed_frames(
    reader: Engine,
    verdicts: dict[int, DefectVerdict],
    since: datetime | None,
    until: datetime | None,
) -> Iterator[FrameDetail]:
    """Frames holding at least one reviewed defect, oldest first, fetched a batch at a time."""
    frame_ids = frames_of_defects(reader, sorted(verdicts), since=since, until=until)
    ordered = sorted(frame_ids, key=lambda f: (frame_ids[f], f))
    for start in range(0, len(ordered), _BATCH_FRAMES):
        batch = ordered[start : start + _BATCH_FRAMES]
        details = frame_details(reader, batch)
        yield from (details[f] for f in batch if f in details)


def _jpeg_bytes(stored: StoredImage) -> bytes:
    """The image as JPEG bytes; ValueError when the stored bytes do not decode to the frame."""
    pixels = stored.pixels()  # decoded also for a JPEG: a training run must not meet a broken file
    if stored.encoding == "jpeg":
        return stored.data  # as the camera sent it: no second lossy encode
    import cv2

    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"frame {stored.frame_id}: JPEG encoding failed")
    return encoded.tobytes()


class _DirSink:
    def __init__(self, root: Path) -> None:
        self.root = root

    def add_image(self, name: str, data: bytes) -> None:
        (self.root / IMAGES_DIR / name).write_bytes(data)

    def add_csv(self, rows: Sequence[tuple[str, int, str]]) -> None:
        write_submission(self.root / CSV_NAME, rows)


class _ZipSink:
    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive

    def add_image(self, name: str, data: bytes) -> None:
        self.archive.writestr(f"{IMAGES_DIR}/{name}", data)

    def add_csv(self, rows: Sequence[tuple[str, int, str]]) -> None:
        entry = zipfile.ZipInfo(CSV_NAME, time.localtime()[:6])
        entry.external_attr = (stat.S_IFREG | 0o644) << 16  # a plain file readable by all, as before
        self.archive.writestr(entry, submission_text(rows))
