"""training.augment: every transform keeps image and masks aligned; crops, photometrics, sampling weights."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from training import augment
from training.augment import Augmenter, AugmentParams

H, W = 64, 96
PAINT = 255


def _painted(num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame and masks with a blob per class; the image is painted PAINT where any mask is."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 120, (H, W), dtype=np.uint8)
    masks = np.zeros((num_classes, H, W), dtype=np.uint8)
    for k in range(num_classes):
        y, x = rng.integers(0, H - 14), rng.integers(0, W - 20)
        cv2.ellipse(masks[k], (int(x) + 10, int(y) + 7), (9, 5), float(rng.integers(0, 180)), 0, 360, 1, -1)
    image[masks.any(axis=0)] = PAINT
    return image, masks


def _assert_aligned(image: np.ndarray, masks: np.ndarray, exact: bool) -> None:
    defect = masks.any(axis=0).astype(np.uint8)
    assert defect.any(), "the transform lost every defect"
    if exact:
        np.testing.assert_array_equal(image == PAINT, defect.astype(bool))
        return
    # Bilinear resampling blurs a one-pixel rim; away from the rim, paint and mask must agree.
    kernel = np.ones((3, 3), np.uint8)
    inside = cv2.erode(defect, kernel).astype(bool)
    outside = ~cv2.dilate(defect, kernel).astype(bool)
    assert (image[inside] > 200).all()
    assert (image[outside] < 200).all()


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        (augment.hflip, lambda a: a[..., ::-1]),
        (augment.vflip, lambda a: a[..., ::-1, :]),
        (augment.rot180, lambda a: np.rot90(a, 2, axes=(-2, -1))),
    ],
)
def test_flips_move_image_and_masks_together(transform: Callable, expected: Callable) -> None:
    image, masks = _painted()
    out_image, out_masks = transform(image, masks)
    np.testing.assert_array_equal(out_image, expected(image))
    np.testing.assert_array_equal(out_masks, expected(masks))
    _assert_aligned(out_image, out_masks, exact=True)


def test_affine_pure_shift_translates_both() -> None:
    image, masks = _painted()
    out_image, out_masks = augment.affine(image, masks, 0.0, (5.0, 3.0))
    # out[y, x] = in[y - 3, x - 5] away from the mirrored border.
    np.testing.assert_array_equal(out_image[3:, 5:], image[:-3, :-5])
    np.testing.assert_array_equal(out_masks[:, 3:, 5:], masks[:, :-3, :-5])


@pytest.mark.parametrize("num_classes", [4, 11])  # 11 > 8 classes takes the per-channel path
def test_affine_rotation_keeps_alignment_and_binary_masks(num_classes: int) -> None:
    image, masks = _painted(num_classes)
    out_image, out_masks = augment.affine(image, masks, 7.0, (-4.0, 2.5))
    assert out_masks.shape == masks.shape and out_masks.dtype == np.uint8
    assert set(np.unique(out_masks)) <= {0, 1}
    assert not np.array_equal(out_masks, masks)
    _assert_aligned(out_image, out_masks, exact=False)


def test_random_crop_sizes_and_alignment() -> None:
    image, masks = _painted()
    rng = np.random.default_rng(1)
    for _ in range(20):
        out_image, out_masks = augment.random_crop(image, masks, (32, 48), rng)
        assert out_image.shape == (32, 48) and out_masks.shape == (4, 32, 48)
        np.testing.assert_array_equal(out_image == PAINT, out_masks.any(axis=0))
    # A crop larger than the frame keeps the frame whole in that axis (NEU 200x200 with 256x512 crops).
    out_image, out_masks = augment.random_crop(image, masks, (256, 48), rng)
    assert out_image.shape == (H, 48)
    out_image, _ = augment.random_crop(image, masks, (256, 512), rng)
    np.testing.assert_array_equal(out_image, image)


def test_defect_crops_contain_a_defect() -> None:
    image, masks = _painted()
    masks[1:] = 0
    masks[0] = 0
    masks[0, 50:54, 80:84] = 1  # one small defect in a corner
    hits = [
        augment.random_crop(image, masks, (16, 16), np.random.default_rng(s), defect_p=1.0)[1].any()
        for s in range(30)
    ]
    assert all(hits)
    # Without the bias, most 16x16 windows of a 64x96 frame miss a 4x4 defect.
    plain = [
        augment.random_crop(image, masks, (16, 16), np.random.default_rng(s))[1].any() for s in range(30)
    ]
    assert sum(plain) < 15


def test_brightness_contrast() -> None:
    image = np.array([[0, 100, 200, 250]], dtype=np.uint8)
    np.testing.assert_array_equal(augment.brightness_contrast(image, 0.1, 1.0), [[26, 126, 226, 255]])
    flat = np.full((4, 4), 100, dtype=np.uint8)
    np.testing.assert_array_equal(augment.brightness_contrast(flat, 0.0, 1.5), flat)  # mean stays
    stretched = augment.brightness_contrast(image, 0.0, 2.0).astype(int)
    assert np.ptp(stretched) > np.ptp(image.astype(int))


def test_augmenter_with_every_transform_on_keeps_alignment() -> None:
    params = AugmentParams(hflip_p=1, vflip_p=1, rot180_p=1, affine_p=1, photometric_p=0)
    image, masks = _painted()
    for seed in range(5):
        out_image, out_masks = Augmenter(params)(image, masks, np.random.default_rng(seed))
        assert out_image.flags.c_contiguous and out_masks.flags.c_contiguous
        _assert_aligned(out_image, out_masks, exact=False)


def test_augmenter_photometric_changes_image_only_and_is_seeded() -> None:
    image, masks = _painted()
    photometric = AugmentParams(hflip_p=0, vflip_p=0, rot180_p=0, affine_p=0, photometric_p=1)
    out_image, out_masks = Augmenter(photometric)(image, masks, np.random.default_rng(3))
    np.testing.assert_array_equal(out_masks, masks)
    assert not np.array_equal(out_image, image)
    default = Augmenter()
    a = default(image, masks, np.random.default_rng(7))
    b = default(image, masks, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    outputs = {default(image, masks, np.random.default_rng(s))[0].tobytes() for s in range(8)}
    assert len(outputs) > 4


def test_bad_params_and_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="hflip_p"):
        AugmentParams(hflip_p=1.5)
    with pytest.raises(ValueError, match="same size"):
        augment.affine(np.zeros((8, 8), np.uint8), np.zeros((1, 8, 9), np.uint8), 0.0, (0.0, 0.0))


def test_balanced_weights_give_each_group_an_equal_share() -> None:
    presence = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0], [0, 0]], dtype=bool)
    weights = augment.balanced_weights(presence)
    assert weights.sum() == pytest.approx(1.0)
    class1, class2, clean = weights[:3].sum(), weights[3], weights[4:].sum()
    assert class1 == pytest.approx(class2) and class2 == pytest.approx(clean)
    # An image with two classes is weighted by its rarer one.
    both = augment.balanced_weights(np.array([[1, 1], [1, 0], [1, 0], [0, 0]], dtype=bool))
    assert both[0] > both[1]
    with pytest.raises(ValueError, match="non-empty"):
        augment.balanced_weights(np.zeros((0, 4), dtype=bool))
