"""Paint the four Severstal defect classes into a surface, strictly inside their masks.

Every painter changes only pixels of the mask it is given (each effect is multiplied by
the mask, edges are feathered inwards), and covers the mask: a tone change over the whole
shape plus class-specific detail, so that a segmenter can learn the annotated region.

* 1 pitting: clusters of small dark pits, some with a bright rim, on a darker, dirtier spot.
* 2 inclusion/crazing: a fine network of dark lines, mostly along the rolling direction.
* 3 scratches: long thin parallel lines along the shape's major axis, bright or dark.
* 4 patches: large blotchy areas, mostly dark, grainy and cracked inside.

Amplitudes are in grey levels of the albedo (before illumination), scaled with the strip's
mean level so that defects keep their contrast on darker strips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np

from producers.synth_texture import REFERENCE_LEVEL, smooth_noise
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

_PAD = 2
_MAX_SCRATCH_TILT_COS = float(np.cos(np.radians(35.0)))  # scratches lean at most this far from vertical


def _components(mask: np.ndarray) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """(crop slices, float32 0/1 component mask in the crop) for each 8-connected component."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        rows = slice(max(0, y - _PAD), min(FRAME_HEIGHT, y + h + _PAD))
        cols = slice(max(0, x - _PAD), min(FRAME_WIDTH, x + w + _PAD))
        yield (rows, cols), (labels[rows, cols] == label).astype(np.float32)


def _feather(inside: np.ndarray, sigma: float) -> np.ndarray:
    """Alpha that is 1 deep inside the shape, falls off towards its border and is 0 outside."""
    blurred = cv2.GaussianBlur(inside, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return np.minimum(blurred * 1.6, 1.0) * inside


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: tuple[float, float]) -> np.ndarray:
    """Unit-variance smooth noise over a crop, one random knot per ``cell`` (rows, cols) pixels."""
    knots = (max(2, int(shape[0] / cell[0]) + 1), max(2, int(shape[1] / cell[1]) + 1))
    return smooth_noise(rng, knots, shape)


def _ridges(rng: np.random.Generator, shape: tuple[int, int], cell: tuple[float, float], width: float):
    """A connected network of thin lines: the zero crossings of smooth noise, ~``width`` wide."""
    field = _noise(rng, shape, cell)
    # |field| / gradient is the distance to the zero crossing; dividing keeps lines equally thin.
    gy, gx = np.gradient(field)
    distance = np.abs(field) / (np.hypot(gx, gy) + 1e-3)
    return np.exp(-((distance / width) ** 2))


def _dots(rng: np.random.Generator, weight: np.ndarray, count: int, sigma: float) -> np.ndarray:
    """``count`` blurred dots (peak about 1) at positions drawn with probability ~ ``weight``."""
    canvas = np.zeros(weight.shape, dtype=np.float32)
    flat = weight.ravel().astype(np.float64)
    total = flat.sum()
    if count <= 0 or total <= 0:
        return canvas
    picks = rng.choice(flat.size, size=count, p=flat / total)
    np.add.at(canvas.ravel(), picks, 1.0)
    return cv2.GaussianBlur(canvas, (0, 0), sigma) * (2.0 * np.pi * sigma * sigma)


def paint_pitting(albedo: np.ndarray, mask: np.ndarray, rng: np.random.Generator, gain: float) -> None:
    for (rows, cols), inside in _components(mask):
        shape = inside.shape
        alpha = _feather(inside, 2.0)
        stain = -rng.uniform(10.0, 24.0) * (0.6 + 0.4 * np.tanh(_noise(rng, shape, (10.0, 10.0))))
        # Pits cluster: their density follows a smooth random field over the shape.
        cluster = inside * np.exp(1.2 * _noise(rng, shape, (10.0, 10.0)))
        area = float(inside.sum())
        small = _dots(rng, cluster, int(area / rng.uniform(8.0, 20.0)), rng.uniform(0.6, 0.9))
        large = _dots(rng, cluster, int(area / rng.uniform(60.0, 160.0)), rng.uniform(1.2, 2.2))
        pits = small * rng.uniform(30.0, 60.0) + large * rng.uniform(25.0, 50.0)
        rim = np.roll(small, -1, axis=0) * rng.uniform(0.0, 25.0)  # light from above catches the far wall
        grain = _noise(rng, shape, (2.0, 2.0)) * rng.uniform(3.0, 7.0)
        albedo[rows, cols] += gain * (alpha * (stain + grain) + inside * (rim - pits))


def paint_inclusion(albedo: np.ndarray, mask: np.ndarray, rng: np.random.Generator, gain: float) -> None:
    for (rows, cols), inside in _components(mask):
        shape = inside.shape
        alpha = _feather(inside, 1.5)
        tone = -rng.uniform(8.0, 18.0) * (0.7 + 0.3 * np.tanh(_noise(rng, shape, (25.0, 8.0))))
        # Cells taller than wide: the network runs along the rolling direction.
        cell = (rng.uniform(10.0, 22.0), rng.uniform(2.5, 4.5))
        network = _ridges(rng, shape, cell, rng.uniform(0.6, 0.9))
        depth = rng.uniform(30.0, 55.0) * np.clip(0.7 + 0.4 * _noise(rng, shape, (20.0, 8.0)), 0.3, 1.0)
        # Slag inclusions: a few dark specks stretched along the strip by rolling.
        specks = _dots(rng, inside, int(inside.sum() / rng.uniform(150.0, 400.0)), 1.0)
        specks = cv2.GaussianBlur(specks, (0, 0), sigmaX=0.5, sigmaY=2.5) * rng.uniform(60.0, 120.0)
        albedo[rows, cols] += gain * (alpha * tone - inside * (network * depth + specks))


def _major_axis(inside: np.ndarray) -> tuple[float, float, float, float]:
    """Centre (x, y) and unit direction (dx, dy) of a shape's long axis (vertical if it is round)."""
    m = cv2.moments(inside, binaryImage=True)
    if m["m00"] <= 0:
        return 0.0, 0.0, 0.0, 1.0
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    mu20, mu02, mu11 = m["mu20"], m["mu02"], m["mu11"]
    spread = np.hypot(mu20 - mu02, 2 * mu11)
    if spread < 0.2 * (mu20 + mu02):
        return cx, cy, 0.0, 1.0
    angle = 0.5 * np.arctan2(2 * mu11, mu20 - mu02)
    dx, dy = float(np.cos(angle)), float(np.sin(angle))
    if dy < 0:
        dx, dy = -dx, -dy
    return cx, cy, dx, dy


def paint_scratches(albedo: np.ndarray, mask: np.ndarray, rng: np.random.Generator, gain: float) -> None:
    for (rows, cols), inside in _components(mask):
        shape = inside.shape
        cx, cy, dx, dy = _major_axis(inside)
        flat = dy < _MAX_SCRATCH_TILT_COS
        if flat:
            # A wide, flat shape is a band of short scratches, still along the rolling direction.
            tilt = rng.normal(0.0, 0.08)
            dx, dy = float(np.sin(tilt)), float(np.cos(tilt))
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        across = (xs - cx) * dy - (ys - cy) * dx  # signed distance from the long axis
        inside_across = across[inside > 0]
        lo, hi = float(inside_across.min()), float(inside_across.max())
        # Parallel lines at random gaps fill the shape's width, each with its own strength.
        gaps = rng.exponential(rng.uniform(3.0, 8.0), size=int((hi - lo) / 2.0) + 2) + 1.5
        centres = lo + rng.uniform(0.0, 2.0) + np.cumsum(gaps) - gaps[0]
        centres = centres[centres <= hi] if (centres <= hi).any() else np.array([(lo + hi) / 2])
        profile_x = np.arange(np.floor(lo) - 2, np.ceil(hi) + 3, 0.25, dtype=np.float32)
        profile = np.zeros_like(profile_x)
        for centre in centres:
            sigma = rng.uniform(0.5, 1.4)
            profile += rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((profile_x - centre) / sigma) ** 2)
        index = np.clip(((across - profile_x[0]) * 4.0).astype(np.int32), 0, profile.size - 1)
        lines = np.minimum(profile[index], 1.3)
        # Lines fade in and out along their length; in wide bands they break into short scratches.
        fade_cell = (rng.uniform(8.0, 20.0), 2.0) if flat else (40.0, 6.0)
        fade = 0.55 + 0.45 * np.tanh(1.5 * _noise(rng, shape, fade_cell) + (0.3 if flat else 1.2))
        bright = rng.random() < 0.65
        strength = rng.uniform(50.0, 95.0) if bright else -rng.uniform(40.0, 70.0)
        tone = (1.0 if bright else -1.0) * rng.uniform(6.0, 16.0)
        alpha = _feather(inside, 1.5)
        albedo[rows, cols] += gain * (alpha * tone + inside * lines * fade * strength)


def paint_patches(albedo: np.ndarray, mask: np.ndarray, rng: np.random.Generator, gain: float) -> None:
    for (rows, cols), inside in _components(mask):
        shape = inside.shape
        size = float(np.sqrt(inside.sum()))
        # A ragged, soft border inside the annotated outline, as where scale has flaked off.
        alpha = _feather(inside, rng.uniform(2.5, 5.0))
        ragged = np.clip(alpha * (1.0 + 0.6 * _noise(rng, shape, (6.0, 6.0))), 0.0, 1.0) * inside
        cell = max(8.0, size / 5)
        blotch = 0.55 + 0.45 * np.tanh(1.3 * _noise(rng, shape, (cell, cell)))
        dark = rng.random() < 0.8
        tone = -rng.uniform(25.0, 50.0) if dark else rng.uniform(25.0, 45.0)
        grain = _noise(rng, shape, (2.5, 2.5)) * rng.uniform(5.0, 12.0)
        streaks = _noise(rng, shape, (20.0, 3.0)) * rng.uniform(3.0, 8.0)
        # Scale cracks open across the strip (it is stretched along it): wide, short cells.
        cracks = _ridges(rng, shape, (rng.uniform(10.0, 20.0), rng.uniform(30.0, 60.0)), 0.9)
        cracks *= np.clip(_noise(rng, shape, (30.0, 30.0)), 0.0, 1.0)  # only part of the network shows
        flakes = _dots(rng, ragged, int(inside.sum() / rng.uniform(300.0, 900.0)), 1.0) * rng.uniform(
            40.0, 90.0
        )
        detail = tone * blotch + grain + streaks + flakes
        albedo[rows, cols] += gain * (ragged * detail - inside * cracks * rng.uniform(25.0, 50.0))


PAINTERS: dict[int, Callable[[np.ndarray, np.ndarray, np.random.Generator, float], None]] = {
    1: paint_pitting,
    2: paint_inclusion,
    3: paint_scratches,
    4: paint_patches,
}


def paint_defects(albedo: np.ndarray, masks: np.ndarray, rng: np.random.Generator, level: float) -> None:
    """Paint every class of ``masks`` (uint8 [C, H, W]) into ``albedo`` in place."""
    gain = level / REFERENCE_LEVEL
    for index, mask in enumerate(masks):
        if mask.any():
            PAINTERS[index + 1](albedo, mask, rng, gain)
