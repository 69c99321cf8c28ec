"""Severstal RLE: round trips, the column-major convention, and every malformed case."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steelcore.rle import decode, decode_stack, encode, encode_stack, parse
from steelcore.severstal import FRAME_SHAPE


def reference_encode(mask: np.ndarray) -> str:
    """An independent, loop-based encoder: walks the column-major pixels one by one."""
    flat = [int(v != 0) for v in np.asarray(mask).flatten(order="F")]
    pairs: list[int] = []
    start = None
    for index, value in enumerate([*flat, 0]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            pairs += [start + 1, index - start]
            start = None
    return " ".join(map(str, pairs))


def padded_reference_encode(mask: np.ndarray) -> str:
    """The padded np.diff encoder of the Kaggle kernels: independent, and fast enough for full frames."""
    flat = np.concatenate([[0], (np.asarray(mask) != 0).flatten(order="F").astype(np.int8), [0]])
    runs = np.flatnonzero(np.diff(flat)) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


small_shapes = st.tuples(st.integers(1, 9), st.integers(1, 9))
small_masks = small_shapes.flatmap(lambda shape: arrays(np.bool_, shape))


@given(small_masks)
def test_round_trip_small_masks(mask: np.ndarray) -> None:
    text = encode(mask)
    assert text == reference_encode(mask) == padded_reference_encode(mask)
    decoded = decode(text, mask.shape)
    assert decoded.dtype == np.uint8
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))


@st.composite
def frame_masks(draw: st.DrawFn) -> np.ndarray:
    """Full-size frames built from a few rectangles, which makes runs that cross column boundaries."""
    height, width = FRAME_SHAPE
    mask = np.zeros(FRAME_SHAPE, dtype=np.uint8)
    for _ in range(draw(st.integers(0, 6))):
        top = draw(st.integers(0, height - 1))
        left = draw(st.integers(0, width - 1))
        mask[top : top + draw(st.integers(1, height)), left : left + draw(st.integers(1, 200))] = 1
    return mask


@settings(max_examples=40, deadline=None)
@given(frame_masks())
def test_round_trip_full_frames(mask: np.ndarray) -> None:
    text = encode(mask)
    assert text == padded_reference_encode(mask)
    np.testing.assert_array_equal(decode(text), mask)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int64, np.float32])
def test_encode_treats_any_nonzero_as_defect(dtype: type) -> None:
    mask = np.zeros((4, 5), dtype=dtype)
    mask[1:3, 2] = 7 if dtype is not np.bool_ else True
    mask[3, 2] = 255 if dtype is not np.bool_ else True
    assert encode(mask) == "10 3"


def test_encode_ignores_memory_layout() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((12, 20)) < 0.3
    expected = reference_encode(mask)
    assert encode(np.asfortranarray(mask)) == expected
    assert encode(mask.astype(np.uint8)) == expected
    big = np.zeros((24, 40), dtype=np.uint8)
    big[::2, ::2] = mask
    assert encode(big[::2, ::2]) == expected  # a strided view, neither C- nor F-contiguous


def test_column_major_convention() -> None:
    # Pixel 1 is top-left, pixel 2 is the one below it, pixel H+1 the top of column 2.
    mask = decode("1 1 3 2", (3, 4))
    expected = np.zeros((3, 4), dtype=np.uint8)
    expected[0, 0] = 1
    expected[2, 0] = 1
    expected[0, 1] = 1
    np.testing.assert_array_equal(mask, expected)


def test_special_masks_on_the_full_frame() -> None:
    height, width = FRAME_SHAPE
    size = height * width
    empty = np.zeros(FRAME_SHAPE, dtype=np.uint8)
    assert encode(empty) == ""
    np.testing.assert_array_equal(decode(""), empty)
    assert encode(np.ones(FRAME_SHAPE, dtype=bool)) == f"1 {size}"
    first = empty.copy()
    first[0, 0] = 1
    assert encode(first) == "1 1"
    last = empty.copy()
    last[-1, -1] = 1
    assert encode(last) == f"{size} 1"
    np.testing.assert_array_equal(decode(f"{size} 1"), last)
    crossing = empty.copy()
    crossing[-2:, 0] = 1
    crossing[:3, 1] = 1  # continues the run from the bottom of column 0
    assert encode(crossing) == f"{height - 1} 5"


def test_touching_runs_decode_and_encode_merged() -> None:
    mask = decode("2 2 4 3", (3, 4))
    assert mask.sum() == 5
    assert encode(mask) == "2 5"


def test_whitespace_is_tolerated() -> None:
    np.testing.assert_array_equal(decode("  1 2\t 5  1\n", (3, 4)), decode("1 2 5 1", (3, 4)))
    assert decode("   ", (3, 4)).sum() == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 x", "non-numeric length token 'x'"),
        ("a 2", "non-numeric start token 'a'"),
        ("1.5 2", "non-numeric start"),
        ("1 2,3 4", "non-numeric"),
        ("0 3", "start 0"),
        ("-1 3", "start must be >= 1"),
        ("1 0", "length 0"),
        ("1 -3", "length must be positive"),
        ("5 2 1 2", "unsorted runs"),
        ("1 5 3 2", "overlapping runs"),
        ("11 3", "past the end of the mask"),
        ("13 1", "past the end of the mask"),
        ("1 99999999999999999999", "too large"),
    ],
)
def test_malformed_rle_raises_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(text, (3, 4))


def test_decode_rejects_bad_shapes_and_types() -> None:
    with pytest.raises(ValueError, match="shape"):
        decode("1 1", (0, 4))
    with pytest.raises(ValueError, match="shape"):
        decode("1 1", (2, 2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="string"):
        decode(b"1 1", (2, 2))  # type: ignore[arg-type]


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode(np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="pixels"):
        encode(np.zeros((0, 4), dtype=np.uint8))


def test_parse_returns_zero_based_runs() -> None:
    starts, lengths = parse("3 2 9 1", (3, 4))
    assert starts.tolist() == [2, 8]
    assert lengths.tolist() == [2, 1]


def test_stack_round_trip() -> None:
    rng = np.random.default_rng(1)
    masks = (rng.random((4, 6, 7)) < 0.4).astype(np.uint8)
    masks[2] = 0
    texts = encode_stack(masks)
    assert len(texts) == 4
    assert texts[2] == ""
    assert texts == [reference_encode(m) for m in masks]
    stacked = decode_stack(texts, (6, 7))
    assert stacked.shape == (4, 6, 7)
    assert stacked.dtype == np.uint8
    np.testing.assert_array_equal(stacked, masks)


def test_stack_errors_name_the_class() -> None:
    with pytest.raises(ValueError, match=r"class index 1: .*odd number"):
        decode_stack(["", "1 2 3"], (3, 4))
    with pytest.raises(ValueError, match="sequence"):
        decode_stack("1 2", (3, 4))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        encode_stack(np.zeros((3, 4), dtype=np.uint8))


def test_decode_stack_default_shape_is_the_frame() -> None:
    stacked = decode_stack(["1 1", "", "", ""])
    assert stacked.shape == (4, *FRAME_SHAPE)
    assert stacked.sum() == 1
