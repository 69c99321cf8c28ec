"""Kaggle Severstal label and submission CSVs.

Two layouts exist in the wild and both are read:

* ``ImageId,ClassId,EncodedPixels`` (the competition's final train.csv and the
  submission format): one row per defect class present; an image with no row
  is defect-free.
* ``ImageId_ClassId,EncodedPixels`` (the original release, still in many
  kernels and mirrors): four rows per image, ``EncodedPixels`` empty for an
  absent class.

Strings are kept as text: the real training set has 12,568 frames, whose
decoded masks (4 x 256 x 1600 bytes each) would not fit in memory. Callers
decode one image at a time with ``steelcore.rle.decode_stack``.
"""

from __future__ import annotations

import csv
import numbers
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from steelcore import rle
from steelcore.csv_safety import restore, safe_row
from steelcore.severstal import NUM_CLASSES

# The Kaggle dataset layout: DIR/train.csv beside DIR/train_images/ (the shared sample uses images/).
LABELS_FILE = "train.csv"
IMAGE_DIRS = ("train_images", "images")

LONG_HEADER = ("ImageId", "ClassId", "EncodedPixels")
COMBINED_HEADER = ("ImageId_ClassId", "EncodedPixels")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _parse_class_id(text: str, num_classes: int, where: str) -> int:
    try:
        class_id = int(text)
    except ValueError:
        raise ValueError(f"{where}: ClassId {text!r} is not an integer") from None
    if not 1 <= class_id <= num_classes:
        raise ValueError(f"{where}: ClassId {class_id} out of range 1..{num_classes}")
    return class_id


def read_labels(
    csv_path: str | Path,
    num_classes: int = NUM_CLASSES,
    validate_shape: tuple[int, int] | None = None,
) -> dict[str, list[str]]:
    """Read a Kaggle label CSV (either layout) into image_id -> one RLE per class ('' = none).

    Every image named in the file is a key, including images whose rows are all
    empty (the combined layout lists defect-free images that way). Images with
    no row at all are defect-free too; see ``defect_free_image_ids``. With
    ``validate_shape`` every string is parsed (not decoded) against that mask
    shape, so a malformed label fails here rather than in a training epoch.
    Raises ValueError naming the file and line for a bad header, a class id
    outside 1..num_classes, a duplicate (image, class) row or a malformed row.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    path = Path(csv_path)
    labels: dict[str, list[str]] = {}
    seen: set[tuple[str, int]] = set()
    # utf-8-sig: CSVs saved by Excel or pandas on Windows start with a BOM.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = tuple(cell.strip() for cell in next(reader, ()))
        if header == LONG_HEADER:
            combined = False
        elif header == COMBINED_HEADER:
            combined = True
        else:
            raise ValueError(
                f"{path}: unrecognised header {','.join(header) or '(empty file)'!r}; expected "
                f"{','.join(LONG_HEADER)!r} or {','.join(COMBINED_HEADER)!r}"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line, e.g. a trailing newline pair
            if len(row) != len(header):
                raise ValueError(f"{where}: expected {len(header)} fields, got {len(row)}")
            if combined:
                image_id, sep, class_text = restore(row[0].strip()).rpartition("_")
                if not sep:
                    raise ValueError(f"{where}: ImageId_ClassId {row[0]!r} has no '_<class>' suffix")
                encoded = row[1].strip()
            else:
                image_id, class_text, encoded = (
                    restore(row[0].strip()),
                    row[1].strip(),
                    restore(row[2].strip()),
                )
            if not image_id:
                raise ValueError(f"{where}: empty ImageId")
            class_id = _parse_class_id(class_text, num_classes, where)
            if (image_id, class_id) in seen:
                raise ValueError(f"{where}: duplicate row for image {image_id!r} class {class_id}")
            seen.add((image_id, class_id))
            if encoded and validate_shape is not None:
                try:
                    rle.parse(encoded, validate_shape)
                except ValueError as exc:
                    raise ValueError(f"{where}: image {image_id!r} class {class_id}: {exc}") from None
            labels.setdefault(image_id, [""] * num_classes)[class_id - 1] = encoded
    return labels


def _image_ids_in(image_dir: Path) -> list[str]:
    if not image_dir.is_dir():
        raise ValueError(f"image folder {image_dir} does not exist")
    return sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def defect_free_image_ids(image_dir: str | Path, labels: Mapping[str, list[str]]) -> list[str]:
    """Images in ``image_dir`` that have no defect: no row in the labels, or only empty strings."""
    return [image_id for image_id in _image_ids_in(Path(image_dir)) if not any(labels.get(image_id, ()))]


def _submission_key(number: int, image_id: str, class_id: int) -> tuple[str, int]:
    if not image_id:
        raise ValueError(f"submission row {number}: empty ImageId")
    if isinstance(class_id, bool) or not isinstance(class_id, numbers.Integral) or class_id < 1:
        raise ValueError(f"submission row {number}: ClassId {class_id!r} must be an integer >= 1")
    return image_id, int(class_id)


def write_submission(path: str | Path, rows: Iterable[tuple[str, int, str]]) -> None:
    """Write ``ImageId,ClassId,EncodedPixels`` rows ('' for no defect), replacing ``path`` atomically.

    Raises ValueError (and leaves any existing file untouched) for an empty
    image id, a class id below 1 or a duplicate (image, class) pair.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[str, int]] = set()
    # Write beside the target and rename, so a reader never sees half a file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(LONG_HEADER)
            for number, (image_id, class_id, encoded) in enumerate(rows, start=1):
                key = _submission_key(number, image_id, class_id)
                if key in seen:
                    raise ValueError(f"submission row {number}: duplicate image {image_id!r} class {key[1]}")
                seen.add(key)
                # Ids come from cameras and file names: never let one run as a spreadsheet formula.
                writer.writerow(safe_row((image_id, key[1], encoded or "")))
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a submission is meant to be shared
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def find_image_dir(root: Path) -> Path | None:
    """The image folder of a Kaggle-layout dataset at ``root`` (first of IMAGE_DIRS present)."""
    return next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
