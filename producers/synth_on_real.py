"""Synthetic defects painted onto real steel frames: real texture, more examples of rare classes.

The synthetic camera's weakest point is its texture (a model trained on it paints masks on clean
real steel). Here the background is a real frame and only the defects are synthetic: shapes from the
2,833 real Severstal masks (the shape library), painted with the synthetic camera's painters at the
frame's own gray level, never over a real defect (the real masks stay labels). Used by training, on
the training frames only, so that cross-validation stays honest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from producers.defect_shapes import ShapeLibrary, default_library
from producers.synth_defects import paint_defects
from producers.synth_layout import combo_probabilities, place_defects, sample_classes
from steelcore.severstal import FRAME_SHAPE

# Rare classes are what the few real frames lack most (pitting 5, inclusion 2 of 65): paint each
# class on about a third of the frames.
DEFAULT_FREQUENCIES = (0.35, 0.35, 0.3, 0.3)


class DefectPainter:
    """Paints synthetic defects onto real frames, deterministically per (frame, draw) key."""

    def __init__(
        self, frequencies: Sequence[float] = DEFAULT_FREQUENCIES, library: ShapeLibrary | None = None
    ) -> None:
        self.library = library if library is not None else default_library()
        self.combos = combo_probabilities(self.library, dict(zip((1, 2, 3, 4), frequencies, strict=True)))

    def classes(self, rng: np.random.Generator) -> tuple[int, ...]:
        return sample_classes(rng, self.combos)

    def paint(
        self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(image with new defects, real masks + new ones); a frame of another size comes back as it is."""
        classes = self.classes(rng)
        if image.shape != FRAME_SHAPE or not classes:
            return image, masks
        new = place_defects(rng, self.library, classes)
        new[:, masks.any(axis=0)] = 0
        albedo = image.astype(np.float32)
        paint_defects(albedo, new, rng, max(float(image.mean()), 1.0))
        out = np.clip(albedo + 0.5, 0, 255).astype(np.uint8)
        return out, (masks | new).astype(np.uint8)
