"""Defect masks drawn over their frame: each class filled and outlined in its colour.

Masks come from the stored RLE (steelcore.rle.decode at the frame's size); colours from
steelcore.severstal.CLASS_COLOURS_RGB. Pure numpy + OpenCV, no Streamlit, so tests and the
retraining tools can use it too.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from steelcore.rle import decode
from steelcore.severstal import CLASS_COLOURS_RGB

DEFAULT_ALPHA = 0.45
# Grey of the canvas drawn when a frame's image was not kept (or was purged).
MISSING_IMAGE_GREY = 96
OUTLINE_PX = 2
_FALLBACK_COLOUR = (255, 255, 255)  # a class id outside the palette


def class_colour(class_id: int) -> tuple[int, int, int]:
    return CLASS_COLOURS_RGB.get(class_id, _FALLBACK_COLOUR)


def class_colour_hex(class_id: int) -> str:
    r, g, b = class_colour(class_id)
    return f"#{r:02x}{g:02x}{b:02x}"


def blank_frame(height: int, width: int) -> np.ndarray:
    """A flat grey frame to draw masks on when the image itself is not available."""
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    return np.full((height, width), MISSING_IMAGE_GREY, dtype=np.uint8)


def overlay_masks(
    image: np.ndarray,
    masks: Iterable[tuple[int, str]],
    *,
    alpha: float = DEFAULT_ALPHA,
    outline: bool = True,
) -> np.ndarray:
    """RGB uint8 [H, W, 3]: the grey ``image`` [H, W] with each (class_id, rle) mask blended in its
    class colour at ``alpha`` and, when ``outline``, its contour drawn fully opaque.

    Raises ValueError for a non-2-D image, alpha outside [0, 1] or an RLE that does not fit the frame.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    grey = image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
    out = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    contours: list[tuple[tuple[int, int, int], list[np.ndarray]]] = []
    for class_id, rle in masks:
        mask = decode(rle, grey.shape).astype(bool)
        if not mask.any():
            continue
        colour = np.asarray(class_colour(class_id), dtype=np.float32)
        out[mask] = out[mask] * (1.0 - alpha) + colour * alpha
        if outline:
            found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            contours.append((class_colour(class_id), list(found)))
    rgb = np.ascontiguousarray(np.rint(out).astype(np.uint8))
    for colour, found in contours:
        cv2.drawContours(rgb, found, -1, colour, OUTLINE_PX)
    return rgb
