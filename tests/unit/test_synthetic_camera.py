"""Synthetic camera: deterministic, disjoint exact masks, configured frequencies, edges, harmless marks."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from producers.defect_shapes import default_library
from producers.synth_defects import paint_defects
from producers.synth_marks import MARK_MARGIN
from producers.synthetic_camera import SyntheticCamera
from steelcore.severstal import CLASS_IDS, FRAME_HEIGHT, FRAME_SHAPE, FRAME_WIDTH, NUM_CLASSES

cv2.setNumThreads(1)

# Every class in most frames, so that overlaps between classes would have many chances to occur.
CROWDED = {1: 0.8, 2: 0.7, 3: 0.9, 4: 0.8}


def _same(a, b) -> bool:
    return (
        a.image_id == b.image_id
        and np.array_equal(a.image, b.image)
        and np.array_equal(a.masks, b.masks)
        and np.array_equal(a.harmless, b.harmless)
    )


def test_frame_is_deterministic_for_seed_and_index() -> None:
    first = SyntheticCamera(seed=7)
    second = SyntheticCamera(seed=7)
    # Frame 3 does not depend on which frames were made before it.
    late = second.frame(3)
    sequence = [first.next_frame() for _ in range(4)]
    assert _same(sequence[3], late)
    assert [f.index for f in sequence] == [0, 1, 2, 3]
    assert _same(SyntheticCamera(seed=7).frame(1), sequence[1])


def test_different_seeds_and_indices_give_different_frames() -> None:
    camera = SyntheticCamera(seed=1)
    a, b = camera.frame(0), camera.frame(1)
    c = SyntheticCamera(seed=2).frame(0)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert len({a.image_id, b.image_id, c.image_id}) == 3


def test_frame_format() -> None:
    frame = SyntheticCamera(seed=0).frame(0)
    assert frame.image.shape == FRAME_SHAPE and frame.image.dtype == np.uint8
    assert frame.masks.shape == (NUM_CLASSES, *FRAME_SHAPE) and frame.masks.dtype == np.uint8
    assert frame.harmless.shape == FRAME_SHAPE and frame.harmless.dtype == bool
    assert set(np.unique(frame.masks)) <= {0, 1}
    assert frame.file_name == f"{frame.image_id}.jpg"


def test_masks_are_disjoint_binary_and_on_the_strip() -> None:
    camera = SyntheticCamera(seed=11, class_frequencies=CROWDED, edge_probability=0.5)
    multi = 0
    for i in range(25):
        frame = camera.frame(i)
        assert set(np.unique(frame.masks)) <= {0, 1}
        assert frame.masks.sum(axis=0).max() <= 1, f"frame {i}: classes overlap"
        multi += len(frame.classes) >= 2
        if frame.edge is not None:
            assert not (frame.masks.any(axis=0) & ~frame.edge.on_strip()).any(), (
                f"frame {i}: mask off the strip"
            )
    assert multi >= 10  # the check above really saw frames with several classes


def test_default_frequencies_mirror_severstal() -> None:
    camera = SyntheticCamera(seed=0)
    real = default_library().real_frame_frequencies()
    for class_id in CLASS_IDS:
        assert camera.class_frequencies[class_id] == pytest.approx(real[class_id], abs=1e-6)
    # About half the frames clean, class 3 the most common, class 2 the rarest.
    assert 0.4 < camera.clean_fraction < 0.55
    assert max(real, key=real.get) == 3 and min(real, key=real.get) == 2


def test_class_frequencies_over_200_frames_match_the_configuration() -> None:
    wanted = {1: 0.3, 2: 0.15, 3: 0.5, 4: 0.25}
    camera = SyntheticCamera(seed=5, class_frequencies=wanted, mark_rate=0.0)
    assert camera.class_frequencies == pytest.approx(wanted, abs=1e-6)
    n = 200
    seen = dict.fromkeys(CLASS_IDS, 0)
    clean = 0
    for i in range(n):
        classes = camera.frame(i).classes
        clean += not classes
        for c in classes:
            seen[c] += 1
    for class_id, p in wanted.items():
        # 4 binomial standard deviations: a correct generator fails this about once in 15,000 runs.
        tolerance = 4 * math.sqrt(p * (1 - p) / n)
        assert abs(seen[class_id] / n - p) <= tolerance, (class_id, seen[class_id] / n, p)
    q = camera.clean_fraction
    assert abs(clean / n - q) <= 4 * math.sqrt(q * (1 - q) / n)


def test_zero_frequencies_give_clean_frames_and_one_gives_always() -> None:
    camera = SyntheticCamera(seed=3, class_frequencies=(0.0, 0.0, 1.0, 0.0))
    for i in range(5):
        assert camera.frame(i).classes == (3,)


def test_edge_frames_have_a_dark_off_strip_region() -> None:
    camera = SyntheticCamera(seed=4, edge_probability=1.0, class_frequencies=(0, 0, 0, 0))
    for i in range(4):
        frame = camera.frame(i)
        assert frame.edge is not None
        on_strip = frame.edge.on_strip()
        assert 0 < (~on_strip).sum() < on_strip.size
        # The first/last columns lie off the strip on the edge's side.
        column = 0 if frame.edge.side == "left" else FRAME_WIDTH - 1
        assert not on_strip[:, column].any()
        off_mean = frame.image[~on_strip].mean()
        assert off_mean < 20.0
        assert frame.image[on_strip].mean() > off_mean + 30.0
    no_edge = SyntheticCamera(seed=4, edge_probability=0.0)
    assert all(no_edge.frame(i).edge is None for i in range(4))


def test_harmless_marks_stay_clear_of_masks_and_off_strip() -> None:
    camera = SyntheticCamera(seed=9, class_frequencies=CROWDED, mark_rate=6.0, edge_probability=0.3)
    kernel = np.ones((2 * MARK_MARGIN + 1, 2 * MARK_MARGIN + 1), np.uint8)
    marked = 0
    for i in range(12):
        frame = camera.frame(i)
        marked += bool(frame.harmless.any())
        near_defect = cv2.dilate(frame.masks.any(axis=0).astype(np.uint8), kernel).astype(bool)
        assert not (frame.harmless & near_defect).any(), f"frame {i}: a harmless mark touches a mask"
        if frame.edge is not None:
            assert not (frame.harmless & ~frame.edge.on_strip()).any()
    assert marked >= 10


def test_mark_rate_zero_means_no_marks() -> None:
    camera = SyntheticCamera(seed=9, mark_rate=0.0)
    assert not any(camera.frame(i).harmless.any() for i in range(5))


@pytest.mark.parametrize("class_id", CLASS_IDS)
def test_defects_are_painted_inside_their_mask_and_cover_it(class_id: int) -> None:
    only = tuple(1.0 if c == class_id else 0.0 for c in CLASS_IDS)
    for index in range(3):
        # A real shape of this class, placed by the camera's own layout code.
        masks = SyntheticCamera(seed=index, class_frequencies=only).frame(0).masks
        inside = masks[class_id - 1].astype(bool)
        assert inside.any() and not np.delete(masks, class_id - 1, axis=0).any()
        albedo = np.full(FRAME_SHAPE, 110.0, np.float32)
        paint_defects(albedo, masks, np.random.default_rng(index), level=110.0)
        delta = np.abs(albedo - 110.0)
        assert not (delta[~inside] > 0).any(), "paint leaked outside the mask"
        covered = (delta[inside] >= 4.0).mean()
        assert covered >= 0.6, f"class {class_id}: only {covered:.0%} of the mask visibly changed"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"class_frequencies": {1: 0.1, 2: 0.1, 3: 0.1}},
        {"class_frequencies": {1: 0.1, 2: 0.1, 3: 0.1, 4: 1.2}},
        {"class_frequencies": (0.1, 0.2, 0.3)},
        {"class_frequencies": {1: 0.1, 2: 0.1, 3: 0.1, 4: 0.1, 5: 0.1}},
        {"edge_probability": -0.1},
        {"mark_rate": -1.0},
        {"style": "velvet"},
    ],
)
def test_bad_parameters_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticCamera(**{"seed": 0, **kwargs})


def test_bad_frame_index_is_rejected() -> None:
    with pytest.raises(ValueError):
        SyntheticCamera(seed=0).frame(-1)


def test_forced_style_is_used() -> None:
    frame = SyntheticCamera(seed=2, style="checker").frame(0)
    assert frame.style == "checker"
    assert frame.image.shape == (FRAME_HEIGHT, FRAME_WIDTH)
