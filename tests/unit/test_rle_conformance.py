"""Conformance with the real Severstal labels: decode -> encode reproduces every real string."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from steelcore.paths import SEVERSTAL_SAMPLE_DIR
from steelcore.rle import decode, encode

LABEL_FILES = [
    SEVERSTAL_SAMPLE_DIR / "train.csv",
    SEVERSTAL_SAMPLE_DIR / "labels" / "train_rle_subset.csv",
]


def _real_strings(path: Path) -> list[str]:
    if not path.exists():
        pytest.skip(f"shared Severstal sample not available at {path}")
    with path.open(newline="") as handle:
        return [row["EncodedPixels"] for row in csv.DictReader(handle) if row["EncodedPixels"]]


@pytest.mark.parametrize("path", LABEL_FILES, ids=lambda p: p.name)
def test_real_strings_round_trip_exactly(path: Path) -> None:
    strings = _real_strings(path)
    assert strings, f"{path} holds no RLE strings"
    mismatched = []
    for text in strings:
        mask = decode(text)
        numbers = [int(t) for t in text.split()]
        # Area computed from the text alone, independently of the decoder.
        assert int(mask.sum()) == sum(numbers[1::2])
        if encode(mask) != text:
            mismatched.append(text[:60])
    assert not mismatched, f"{len(mismatched)} of {len(strings)} strings changed, e.g. {mismatched[:3]}"


def test_real_subset_has_expected_row_count() -> None:
    # Guards the conformance test against silently checking a truncated file.
    assert len(_real_strings(LABEL_FILES[1])) == 2833


def test_first_real_run_lands_on_its_pixel() -> None:
    text = _real_strings(LABEL_FILES[0])[0]
    start, length = (int(t) for t in text.split()[:2])
    mask = decode(text)
    column, row = divmod(start - 1, mask.shape[0])
    assert mask[row, column] == 1
    flat = mask.flatten(order="F")
    assert flat[start - 2] == 0 or start == 1
    assert np.all(flat[start - 1 : start - 1 + length] == 1)
