"""The shipped shape library reproduces the real Severstal masks it was built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from producers.defect_shapes import (
    LIBRARY_PATH,
    REAL_MASKS_CSV,
    REAL_PRESENCE_CSV,
    ShapeLibrary,
    build_library,
    combo_classes,
    combo_index,
    default_library,
    load_library,
    rasterize,
    save_library,
)
from steelcore.severstal import CLASS_IDS, NUM_CLASSES

needs_shared = pytest.mark.skipif(
    not (REAL_MASKS_CSV.is_file() and REAL_PRESENCE_CSV.is_file()),
    reason="shared Severstal sample not present",
)


def test_combo_index_and_classes_are_inverse() -> None:
    for index in range(1 << NUM_CLASSES):
        classes = combo_classes(index)
        assert combo_index([c in classes for c in CLASS_IDS]) == index


def test_shipped_library_is_small_and_covers_every_class() -> None:
    assert LIBRARY_PATH.stat().st_size < 5_000_000
    library = default_library()
    for class_id in CLASS_IDS:
        assert library.groups_of(class_id).size > 50
    assert library.combo_counts.sum() > 10_000


def test_every_group_rasterizes_to_its_recorded_area() -> None:
    # group_area was measured on the exact decoded real mask when the library was built.
    library = default_library()
    for group in range(library.num_groups):
        mask = rasterize(library.contours(group))
        assert int(mask.sum()) == int(library.group_area[group]), f"group {group}"


@needs_shared
def test_library_masks_equal_the_real_rle_masks() -> None:
    from steelcore.kaggle_csv import read_labels
    from steelcore.rle import decode

    labels = read_labels(REAL_MASKS_CSV)
    real = [decode(r) for image_id in sorted(labels) for r in labels[image_id] if r]
    library = default_library()
    assert library.num_groups == len(real)
    for group in range(0, library.num_groups, 37):
        assert np.array_equal(rasterize(library.contours(group)), real[group]), f"group {group}"


@needs_shared
@pytest.mark.slow
def test_rebuild_reproduces_the_shipped_file(tmp_path: Path) -> None:
    rebuilt = save_library(build_library(), tmp_path / "shapes.npz")
    assert rebuilt.read_bytes() == LIBRARY_PATH.read_bytes()


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    square = np.array([[10, 10], [10, 19], [19, 19], [19, 10]], np.int32)
    hole = np.array([[13, 13], [13, 16], [16, 16], [16, 13]], np.int32)
    line = np.array([[100, 0], [100, 255], [103, 255], [103, 0]], np.int32)
    library = ShapeLibrary(
        combo_counts=np.arange(16, dtype=np.int64),
        group_class=np.array([1, 3], np.int8),
        group_offsets=np.array([0, 2, 3], np.int32),
        contour_offsets=np.array([0, 4, 8, 12], np.int32),
        vertices=np.concatenate([square, hole, line]),
        group_area=np.array([84, 1024], np.int32),
        group_centroid_x=np.array([14.5, 101.5], np.float32),
        group_components=np.array([1, 1], np.int16),
        source_digest="test",
    )
    loaded = load_library(save_library(library, tmp_path / "lib.npz"))
    assert np.array_equal(loaded.vertices, library.vertices)
    assert [c.tolist() for c in loaded.contours(0)] == [square.tolist(), hole.tolist()]
    assert loaded.source_digest == "test"
    # Outer contour and hole filled together leave the hole's interior empty.
    mask = rasterize(loaded.contours(0))
    assert mask[11, 11] == 1 and mask[14, 14] == 0


def test_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_library(tmp_path / "absent.npz")
