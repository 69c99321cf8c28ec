"""Harmless surface marks: oil spots and water stains, which an inspection must NOT report.

They give a model hard negatives. Each mark is kept clear of every defect mask (with a
margin) and of the off-strip region, and is drawn so as not to look like a defect class:
smooth, soft-edged and round (oil) or a faint closed ring (water), never a cluster of pits,
a line network, a long line along the strip or a grainy cracked patch.
"""

from __future__ import annotations

import cv2
import numpy as np

from producers.synth_texture import smooth_noise
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

MARK_MARGIN = 6  # pixels kept between a mark's footprint and any defect mask
FOOTPRINT_LEVEL = 0.5  # grey levels: a pixel changed by at least this belongs to a mark
_PLACEMENT_TRIES = 10


def _oil_spot(rng: np.random.Generator) -> np.ndarray:
    radius_x = rng.uniform(6.0, 40.0)
    radius_y = radius_x * rng.uniform(0.6, 1.6)
    half_w, half_h = int(2.2 * radius_x) + 1, int(2.2 * radius_y) + 1
    ys, xs = np.mgrid[-half_h : half_h + 1, -half_w : half_w + 1].astype(np.float32)
    r2 = (xs / radius_x) ** 2 + (ys / radius_y) ** 2
    body = np.exp(-r2 * rng.uniform(0.8, 1.5))
    halo = np.exp(-((np.sqrt(r2) - 1.1) ** 2) * 30.0) * rng.uniform(0.0, 0.25)  # faint spreading ring
    dark = rng.random() < 0.8
    amplitude = -rng.uniform(12.0, 30.0) if dark else rng.uniform(8.0, 16.0)
    return amplitude * (body + halo)


def _water_stain(rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(18.0, 80.0)
    aspect = rng.uniform(0.6, 1.4)
    half_w, half_h = int(1.5 * radius) + 1, int(1.5 * radius * aspect) + 1
    ys, xs = np.mgrid[-half_h : half_h + 1, -half_w : half_w + 1].astype(np.float32)
    r = np.sqrt(xs**2 + (ys / aspect) ** 2) / radius
    # A tide mark wanders around the mean radius; the dried film inside is a slightly different grey.
    wobble = smooth_noise(rng, (4, 4), r.shape) * 0.08
    edge = r + wobble
    ring = np.exp(-(((edge - 1.0) * radius / rng.uniform(2.0, 4.0)) ** 2))
    film = 1.0 / (1.0 + np.exp((edge - 1.0) * radius / 1.5))
    return -rng.uniform(12.0, 25.0) * ring + rng.uniform(-8.0, 8.0) * film


def paint_marks(
    albedo: np.ndarray,
    rng: np.random.Generator,
    count: int,
    keep_clear: np.ndarray,
    gain: float = 1.0,
) -> np.ndarray:
    """Paint up to ``count`` marks where ``keep_clear`` (bool [H, W]) is False; returns their footprint.

    ``keep_clear`` holds the defect masks and the off-strip region. A mark that finds no clear
    place in a few tries is left out.
    """
    footprint = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), dtype=bool)
    if count <= 0:
        return footprint
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * MARK_MARGIN + 1, 2 * MARK_MARGIN + 1))
    blocked = cv2.dilate(keep_clear.astype(np.uint8), kernel).astype(bool)
    for _ in range(count):
        delta = (_oil_spot if rng.random() < 0.6 else _water_stain)(rng) * gain
        touched = np.abs(delta) >= FOOTPRINT_LEVEL
        h, w = delta.shape
        if h > FRAME_HEIGHT or w > FRAME_WIDTH:
            continue
        for _ in range(_PLACEMENT_TRIES):
            y = int(rng.integers(0, FRAME_HEIGHT - h + 1))
            x = int(rng.integers(0, FRAME_WIDTH - w + 1))
            if not (blocked[y : y + h, x : x + w] & touched).any():
                albedo[y : y + h, x : x + w] += np.where(touched, delta, 0.0)
                footprint[y : y + h, x : x + w] |= touched
                break
    return footprint
