"""Training-time augmentation of a frame and its masks, in numpy + cv2.

Every geometric transform moves the image and the masks together (masks with nearest-neighbour
interpolation, so they stay binary); photometric transforms touch the image only. Randomness
comes from the ``numpy.random.Generator`` passed in, so a sample's augmentation depends only on
that generator's seed: the training loop derives it from (seed, epoch, sample index), which makes
runs reproducible whatever the number of DataLoader workers and lets --resume continue exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Masks with up to this many classes travel through cv2 as one bit-packed uint8 channel.
_PACKABLE_CLASSES = 8


@dataclass(frozen=True)
class AugmentParams:
    """Probabilities and ranges of the random transforms (the defaults suit Severstal and NEU frames)."""

    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rot180_p: float = 0.25
    affine_p: float = 0.3
    max_rotation_deg: float = 5.0
    max_shift_frac: float = 0.05  # of the frame's height and width
    photometric_p: float = 0.5
    max_brightness: float = 0.1  # additive, as a fraction of 255
    max_contrast: float = 0.2  # gain drawn from [1 - c, 1 + c] around the frame mean

    def __post_init__(self) -> None:
        for name in ("hflip_p", "vflip_p", "rot180_p", "affine_p", "photometric_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]; got {p}")
        for name in ("max_rotation_deg", "max_shift_frac", "max_brightness", "max_contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")


def _check_pair(image: np.ndarray, masks: np.ndarray) -> None:
    if image.ndim != 2 or masks.ndim != 3 or masks.shape[1:] != image.shape:
        raise ValueError(
            f"need image (H, W) and masks (C, H, W) of the same size; got {image.shape}, {masks.shape}"
        )


def hflip(image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right."""
    return image[:, ::-1], masks[:, :, ::-1]


def vflip(image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror top-bottom."""
    return image[::-1, :], masks[:, ::-1, :]


def rot180(image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by 180 degrees."""
    return image[::-1, ::-1], masks[:, ::-1, ::-1]


def _pack(masks: np.ndarray) -> np.ndarray:
    weights = (1 << np.arange(masks.shape[0], dtype=np.uint8))[:, None, None]
    return (masks.astype(bool).astype(np.uint8) * weights).sum(axis=0, dtype=np.uint8)


def _unpack(packed: np.ndarray, num_classes: int) -> np.ndarray:
    bits = (1 << np.arange(num_classes, dtype=np.uint8))[:, None, None]
    return (packed[None] & bits).astype(bool).astype(np.uint8)


def affine(
    image: np.ndarray, masks: np.ndarray, angle_deg: float, shift_xy: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by angle_deg about the centre and shift by (dx, dy) pixels; borders are mirrored.

    Mirroring the border for both image and masks keeps them aligned (a defect cut by the edge
    continues into the mirrored strip in both), and avoids black wedges the camera never produces.
    """
    _check_pair(image, masks)
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2.0 - 0.5, h / 2.0 - 0.5), float(angle_deg), 1.0)
    matrix[:, 2] += shift_xy
    border = cv2.BORDER_REFLECT_101
    out_image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)
    c = masks.shape[0]
    if c <= _PACKABLE_CLASSES:
        packed = cv2.warpAffine(_pack(masks), matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=border)
        out_masks = _unpack(packed, c)
    else:
        out_masks = np.stack(
            [
                cv2.warpAffine(
                    np.ascontiguousarray(m), matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=border
                )
                for m in masks
            ]
        )
    return out_image, out_masks


def brightness_contrast(image: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    """image' = (image - mean) * contrast + mean + brightness * 255, clipped to uint8."""
    pixels = image.astype(np.float32)
    mean = float(pixels.mean())
    out = (pixels - mean) * contrast + mean + brightness * 255.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def crop_window(
    shape: tuple[int, int],
    crop_hw: tuple[int, int],
    rng: np.random.Generator,
    masks: np.ndarray | None = None,
    defect_p: float = 0.0,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop no larger than the frame.

    With probability defect_p (and if the masks hold any defect) the window is placed so that it
    contains a randomly chosen defect pixel: Severstal defects cover a few percent of a frame, and
    purely random 256x512 windows of a 1600-wide frame would mostly show clean steel.
    """
    h, w = shape
    ch, cw = min(crop_hw[0], h), min(crop_hw[1], w)
    if ch <= 0 or cw <= 0:
        raise ValueError(f"crop size must be positive; got {crop_hw}")
    if masks is not None and defect_p > 0 and rng.random() < defect_p:
        # Columns (or rows) that hold a defect, sampled without scanning every pixel.
        cols = np.flatnonzero(masks.any(axis=(0, 1)))
        if cols.size:
            x = int(cols[rng.integers(cols.size)])
            rows = np.flatnonzero(masks[:, :, x].any(axis=0))
            y = int(rows[rng.integers(rows.size)])
            top = int(np.clip(y - rng.integers(ch), 0, h - ch))
            left = int(np.clip(x - rng.integers(cw), 0, w - cw))
            return top, left, ch, cw
    return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw


def random_crop(
    image: np.ndarray,
    masks: np.ndarray,
    crop_hw: tuple[int, int],
    rng: np.random.Generator,
    defect_p: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A random crop of at most crop_hw (a frame smaller than the crop is kept whole in that axis)."""
    _check_pair(image, masks)
    top, left, ch, cw = crop_window(image.shape, crop_hw, rng, masks, defect_p)
    return image[top : top + ch, left : left + cw], masks[:, top : top + ch, left : left + cw]


class Augmenter:
    """Draws and applies a random chain of transforms: flips, 180-degree turn, small affine, photometric."""

    def __init__(self, params: AugmentParams | None = None) -> None:
        self.params = params or AugmentParams()

    def __call__(
        self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        _check_pair(image, masks)
        p = self.params
        if rng.random() < p.hflip_p:
            image, masks = hflip(image, masks)
        if rng.random() < p.vflip_p:
            image, masks = vflip(image, masks)
        if rng.random() < p.rot180_p:
            image, masks = rot180(image, masks)
        image, masks = np.ascontiguousarray(image), np.ascontiguousarray(masks)
        if rng.random() < p.affine_p:
            h, w = image.shape
            angle = rng.uniform(-p.max_rotation_deg, p.max_rotation_deg)
            shift = (rng.uniform(-1, 1) * p.max_shift_frac * w, rng.uniform(-1, 1) * p.max_shift_frac * h)
            image, masks = affine(image, masks, angle, shift)
        if rng.random() < p.photometric_p:
            brightness = rng.uniform(-p.max_brightness, p.max_brightness)
            contrast = rng.uniform(1 - p.max_contrast, 1 + p.max_contrast)
            image = brightness_contrast(image, brightness, contrast)
        return image, masks


def balanced_weights(presence: np.ndarray) -> np.ndarray:
    """Per-image sampling weights that give every class (and the defect-free group) an equal share.

    presence: (N, C) bool, which classes each image holds. An image's weight is 1 / (number of
    images of its rarest class); a defect-free image counts as one more group. Weights sum to 1,
    ready for torch's WeightedRandomSampler.
    """
    presence = np.asarray(presence, dtype=bool)
    if presence.ndim != 2 or presence.shape[0] == 0:
        raise ValueError(f"presence must be a non-empty (N, C) array; got shape {presence.shape}")
    groups = np.concatenate([presence, ~presence.any(axis=1, keepdims=True)], axis=1)
    counts = groups.sum(axis=0).astype(np.float64)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    weights = (groups * inverse).max(axis=1)
    return weights / weights.sum()
