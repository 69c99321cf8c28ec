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
    # How real cameras differ (issue: a frame 18-20 gray levels brighter or re-encoded must keep its
    # answer): each transform below has its own probability so that a frame sees a mix of them.
    camera_p: float = 0.0
    max_offset_levels: float = 25.0  # additive gray levels
    max_gain: float = 0.15  # multiplicative gain in [1 - g, 1 + g] (not around the mean: a lamp's gain)
    max_gamma: float = 0.25  # gamma drawn log-uniformly in [1 / (1 + g), 1 + g]
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (60, 95)
    blur_p: float = 0.0
    max_blur_sigma: float = 1.0
    noise_p: float = 0.0
    max_noise_std: float = 4.0  # gray levels

    def __post_init__(self) -> None:
        for name in (
            "hflip_p",
            "vflip_p",
            "rot180_p",
            "affine_p",
            "photometric_p",
            "camera_p",
            "jpeg_p",
            "blur_p",
            "noise_p",
        ):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]; got {p}")
        for name in (
            "max_rotation_deg",
            "max_shift_frac",
            "max_brightness",
            "max_contrast",
            "max_offset_levels",
            "max_gain",
            "max_gamma",
            "max_blur_sigma",
            "max_noise_std",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(f"jpeg_quality must be (low, high) within 1..100; got {self.jpeg_quality}")


# The camera-robust preset `steel train` uses on real steel: every photometric change a line camera
# makes (lamp gain and offset of +-25 gray levels, contrast, gamma, JPEG re-encoding at quality 60-95,
# slight defocus and sensor noise) on top of the geometric flips and shifts.
CAMERA_AUGMENT = AugmentParams(camera_p=0.8, jpeg_p=0.5, blur_p=0.2, noise_p=0.3)


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


def camera_response(image: np.ndarray, gain: float, offset: float, gamma: float) -> np.ndarray:
    """A lamp/sensor change: 255 * (gain * x / 255) ** gamma + offset, clipped to uint8 (a lookup table)."""
    levels = np.arange(256, dtype=np.float32) / 255.0
    curve = 255.0 * np.power(np.clip(levels * gain, 0.0, None), gamma) + offset
    table = np.clip(curve + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """The frame encoded as JPEG at quality and decoded again (a camera or a copy that re-encodes)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("cv2 could not JPEG-encode the frame")
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma)) if sigma > 0 else image


def sensor_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, std, image.shape).astype(np.float32)
    return np.clip(image.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)


class Augmenter:
    """Draws and applies a random chain of transforms: flips, 180-degree turn, small affine, photometric,
    then (when their probabilities are set) camera response, blur, noise and JPEG re-encoding."""

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
        image = self._camera(np.ascontiguousarray(image), rng)
        return image, masks

    def _camera(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        if p.camera_p and rng.random() < p.camera_p:
            gain = rng.uniform(1 - p.max_gain, 1 + p.max_gain)
            offset = rng.uniform(-p.max_offset_levels, p.max_offset_levels)
            gamma = float(np.exp(rng.uniform(-1, 1) * np.log1p(p.max_gamma)))
            image = camera_response(image, gain, offset, gamma)
        if p.blur_p and rng.random() < p.blur_p:
            image = gaussian_blur(image, rng.uniform(0.3, max(0.3, p.max_blur_sigma)))
        if p.noise_p and rng.random() < p.noise_p:
            image = sensor_noise(image, rng.uniform(0, p.max_noise_std), rng)
        # Last, as on a line: the camera or a copy re-encodes what it saw.
        if p.jpeg_p and rng.random() < p.jpeg_p:
            image = jpeg_roundtrip(image, int(rng.integers(p.jpeg_quality[0], p.jpeg_quality[1] + 1)))
        return image


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
