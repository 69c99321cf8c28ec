"""rle.area_and_box: a defect's area and bounding box from its runs, as the decoded mask has them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelcore import rle
from steelcore.postgres.frame_records import mask_box

SHAPES = st.tuples(st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=300, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**32 - 1), density=st.floats(0.0, 1.0))
def test_area_and_box_equals_the_decoded_masks(shape: tuple[int, int], seed: int, density: float) -> None:
    mask = (np.random.default_rng(seed).random(shape) < density).astype(np.uint8)
    assert rle.area_and_box(rle.encode(mask), shape) == mask_box(mask)


def test_a_run_into_the_next_column_spans_every_row() -> None:
    # Column-major, 1-indexed: pixel 4 is the bottom of column 0 and pixel 5 the top of column 1.
    assert rle.area_and_box("4 2", (4, 3)) == (2, (0, 0, 1, 3))
    assert rle.area_and_box("2 2", (4, 3)) == (2, (0, 1, 0, 2))
    assert rle.area_and_box("", (4, 3)) is None


def test_a_malformed_rle_is_refused() -> None:
    with pytest.raises(ValueError, match="past the end"):
        rle.area_and_box("10 5", (4, 3))
