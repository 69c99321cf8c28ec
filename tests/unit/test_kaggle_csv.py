"""Kaggle label CSVs (both layouts) and the submission writer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from steelcore.kaggle_csv import defect_free_image_ids, read_labels, write_submission
from steelcore.paths import SEVERSTAL_SAMPLE_DIR
from steelcore.rle import decode_stack


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_long_layout(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "train.csv",
        "ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\na.jpg,4,10 2 20 1\nb.jpg,3,5 5\n",
    )
    assert read_labels(path) == {"a.jpg": ["1 3", "", "", "10 2 20 1"], "b.jpg": ["", "", "5 5", ""]}


def test_combined_layout_keeps_defect_free_images(tmp_path: Path) -> None:
    lines = ["ImageId_ClassId,EncodedPixels"]
    lines += [f"a.jpg_{c}," + ("1 3" if c == 2 else "") for c in range(1, 5)]
    lines += [f"clean_frame.jpg_{c}," for c in range(1, 5)]
    path = _write(tmp_path / "train.csv", "\n".join(lines) + "\n")
    labels = read_labels(path)
    assert labels == {"a.jpg": ["", "1 3", "", ""], "clean_frame.jpg": ["", "", "", ""]}


def test_layouts_agree(tmp_path: Path) -> None:
    long = _write(tmp_path / "long.csv", "ImageId,ClassId,EncodedPixels\nx.png,2,7 1\n")
    combined = _write(
        tmp_path / "combined.csv",
        "ImageId_ClassId,EncodedPixels\nx.png_1,\nx.png_2,7 1\nx.png_3,\nx.png_4,\n",
    )
    assert read_labels(long) == read_labels(combined)


def test_bom_blank_lines_and_num_classes(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffImageId,ClassId,EncodedPixels\r\nimg.jpg,6,1 1\r\n\r\n".encode())
    assert read_labels(path, num_classes=6) == {"img.jpg": ["", "", "", "", "", "1 1"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unrecognised header"),
        ("Image,Class,Pixels\n", "unrecognised header"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,5,1 1\n", "ClassId 5 out of range 1..4"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,0,1 1\n", "out of range"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,one,1 1\n", "not an integer"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\na.jpg,1,5 1\n", r"train.csv:3: duplicate row"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1\n", "expected 3 fields"),
        ("ImageId,ClassId,EncodedPixels\n,1,1 1\n", "empty ImageId"),
        ("ImageId_ClassId,EncodedPixels\na.jpg,1 1\n", "no '_<class>' suffix"),
        ("ImageId_ClassId,EncodedPixels\na.jpg_9,\n", "out of range"),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_1,\n", "duplicate row"),
    ],
)
def test_bad_files_raise_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "train.csv", text)
    with pytest.raises(ValueError, match=message):
        read_labels(path)


def test_validate_shape_catches_malformed_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.csv", "ImageId,ClassId,EncodedPixels\na.jpg,3,1 2 3\n")
    assert read_labels(path) == {"a.jpg": ["", "", "1 2 3", ""]}  # text is kept as is by default
    with pytest.raises(ValueError, match=r"train.csv:2: image 'a.jpg' class 3: .*odd number of tokens"):
        read_labels(path, validate_shape=(256, 1600))


def test_real_files() -> None:
    subset = SEVERSTAL_SAMPLE_DIR / "labels" / "train_rle_subset.csv"
    if not subset.exists():
        pytest.skip("shared Severstal sample not available")
    with subset.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = read_labels(subset, validate_shape=(256, 1600))
    assert sum(1 for per_class in labels.values() for text in per_class if text) == len(rows)
    first = rows[0]
    assert labels[first["ImageId"]][int(first["ClassId"]) - 1] == first["EncodedPixels"]

    sample = read_labels(SEVERSTAL_SAMPLE_DIR / "train.csv")
    images = SEVERSTAL_SAMPLE_DIR / "images"
    # PROVENANCE.md: 000789191.png has no row and is the defect-free frame.
    assert defect_free_image_ids(images, sample) == ["000789191.png"]


def test_defect_free_image_ids(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.PNG", "c.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    labels = {"a.jpg": ["1 1", "", "", ""], "c.jpg": ["", "", "", ""]}
    assert defect_free_image_ids(tmp_path, labels) == ["b.PNG", "c.jpg"]
    with pytest.raises(ValueError, match="does not exist"):
        defect_free_image_ids(tmp_path / "missing", labels)


def test_submission_round_trip(tmp_path: Path) -> None:
    rows = [("a.jpg", 1, "1 3"), ("a.jpg", 2, ""), ("b.jpg", 4, "10 2 20 1"), ("c.jpg", 3, "")]
    path = tmp_path / "out" / "submission.csv"
    write_submission(path, iter(rows))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "ImageId,ClassId,EncodedPixels"
    assert lines[1:] == ["a.jpg,1,1 3", "a.jpg,2,", "b.jpg,4,10 2 20 1", "c.jpg,3,"]
    labels = read_labels(path)
    assert labels == {
        "a.jpg": ["1 3", "", "", ""],
        "b.jpg": ["", "", "", "10 2 20 1"],
        "c.jpg": ["", "", "", ""],
    }
    masks = decode_stack(labels["b.jpg"], (5, 6))
    assert masks[3].sum() == 3 and masks[:3].sum() == 0
    assert masks.dtype == np.uint8


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a.jpg", 1, ""), ("a.jpg", 1, "1 1")], "row 2: duplicate"),
        ([("", 1, "")], "empty ImageId"),
        ([("a.jpg", 0, "")], "must be an integer >= 1"),
        ([("a.jpg", "1", "")], "must be an integer >= 1"),
    ],
)
def test_submission_rejects_bad_rows_and_keeps_old_file(
    tmp_path: Path, rows: list[tuple[str, int, str]], message: str
) -> None:
    path = tmp_path / "submission.csv"
    path.write_text("previous\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        write_submission(path, rows)
    assert path.read_text(encoding="utf-8") == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temporary file left behind
