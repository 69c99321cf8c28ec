"""Which defect classes a synthetic frame holds, and where their exact masks lie.

Class presence follows the real per-frame co-occurrence table, reweighted to the requested
per-class frame frequencies by iterative proportional fitting (the closest distribution to
the real one, in the Kullback-Leibler sense, that has the requested marginals). Each present
class takes one real (frame, class) mask from the shape library, moved a little (flip,
scale, shift) so that no two synthetic frames share a mask, and painted in an order that
keeps the classes' masks disjoint, as in Kaggle's labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from producers.defect_shapes import ShapeLibrary, combo_classes, rasterize
from producers.synth_texture import StripEdge
from steelcore.severstal import CLASS_IDS, FRAME_HEIGHT, FRAME_SHAPE, FRAME_WIDTH, NUM_CLASSES

# One pseudo-frame per combination, so that any requested frequencies are reachable
# (e.g. classes 2 and 4 together, which the real table holds only once).
_PSEUDO_COUNT = 1.0
# Large shapes first, so the small ones are moved around them rather than the reverse.
PAINT_ORDER = (4, 3, 1, 2)
PLACEMENT_TRIES = 8
MIN_CLASS_AREA = 32  # pixels; a class left smaller than this by clipping is placed again
SHIFT_X_STD = 160.0  # pixels: spread of the across-width move of a real shape


def normalise_frequencies(class_frequencies: Mapping[int, float] | Sequence[float]) -> dict[int, float]:
    """Per-class frame frequencies as {class_id: share in [0, 1]}; ValueError naming what is wrong."""
    if isinstance(class_frequencies, Mapping):
        unknown = set(class_frequencies) - set(CLASS_IDS)
        if unknown:
            raise ValueError(
                f"class_frequencies has unknown class ids {sorted(unknown)}; expected {CLASS_IDS}"
            )
        missing = set(CLASS_IDS) - set(class_frequencies)
        if missing:
            raise ValueError(f"class_frequencies misses class ids {sorted(missing)}")
        freqs = {c: class_frequencies[c] for c in CLASS_IDS}
    else:
        values = list(class_frequencies)
        if len(values) != NUM_CLASSES:
            raise ValueError(f"class_frequencies needs {NUM_CLASSES} values, got {len(values)}")
        freqs = dict(zip(CLASS_IDS, values, strict=True))
    out: dict[int, float] = {}
    for class_id, value in freqs.items():
        try:
            share = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"class_frequencies[{class_id}] = {value!r} is not a number") from None
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"class_frequencies[{class_id}] = {share} is outside [0, 1]")
        out[class_id] = share
    return out


def combo_probabilities(library: ShapeLibrary, class_frequencies: Mapping[int, float] | None) -> np.ndarray:
    """Probability of each class-presence combination (index as ``combo_index``).

    ``None`` means the real frequencies, so the default camera mirrors Severstal.
    """
    target = library.real_frame_frequencies() if class_frequencies is None else class_frequencies
    p = library.combo_counts.astype(np.float64) + _PSEUDO_COUNT
    p /= p.sum()
    combos = np.arange(p.size)
    for _ in range(500):
        for bit, class_id in enumerate(CLASS_IDS):
            has = (combos >> bit & 1).astype(bool)
            share = p[has].sum()
            want = target[class_id]
            p[has] *= want / share if share > 0 else 0.0
            p[~has] *= (1.0 - want) / (1.0 - share) if share < 1 else 0.0
        margins = [p[(combos >> bit & 1).astype(bool)].sum() for bit in range(NUM_CLASSES)]
        if max(abs(m - target[c]) for m, c in zip(margins, CLASS_IDS, strict=True)) < 1e-10:
            break
    return p / p.sum()


def _moved(
    contours: list[np.ndarray], rng: np.random.Generator, columns: tuple[int, int]
) -> list[np.ndarray]:
    """The contours flipped, scaled and shifted at random, kept on the strip's columns where they fit."""
    points = np.concatenate(contours).astype(np.float64)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    scale = np.exp(rng.normal(0.0, 0.08, size=2)).clip(0.8, 1.25)
    flip = np.where(rng.random(2) < 0.5, -1.0, 1.0)
    factor = scale * flip
    half = np.array([(x1 - x0) / 2, (y1 - y0) / 2]) * scale
    # Across the width: stay near the real position; along the strip: anywhere in the frame.
    first, stop = columns
    lo_x, hi_x = first + half[0], stop - 1 - half[0]
    cx = centre[0] + rng.normal(0.0, SHIFT_X_STD)
    cx = (first + stop - 1) / 2 if lo_x > hi_x else float(np.clip(cx, lo_x, hi_x))
    lo_y, hi_y = half[1], FRAME_HEIGHT - 1 - half[1]
    cy = (FRAME_HEIGHT - 1) / 2 if lo_y > hi_y else rng.uniform(lo_y, hi_y)
    target = np.array([cx, cy])
    return [np.rint((c - centre) * factor + target).astype(np.int32) for c in contours]


def place_defects(
    rng: np.random.Generator,
    library: ShapeLibrary,
    classes: Sequence[int],
    edge: StripEdge | None = None,
) -> np.ndarray:
    """Exact, pairwise disjoint masks uint8 [C, H, W] for ``classes``, on the strip only.

    A class whose shape cannot be placed clear of the others with at least MIN_CLASS_AREA pixels
    in PLACEMENT_TRIES attempts keeps its largest attempt, minus the pixels already taken.
    """
    masks = np.zeros((NUM_CLASSES, *FRAME_SHAPE), dtype=np.uint8)
    occupied = np.zeros(FRAME_SHAPE, dtype=bool)
    on_strip = None if edge is None else edge.on_strip()
    columns = (0, FRAME_WIDTH) if edge is None else edge.strip_columns()
    for class_id in (c for c in PAINT_ORDER if c in classes):
        groups = library.groups_of(class_id)
        best: np.ndarray | None = None
        best_area = -1
        for attempt in range(PLACEMENT_TRIES):
            # Move the same real shape first; only a shape that keeps failing is swapped, so that
            # large shapes are not replaced by small ones more often than clipping demands.
            if attempt % (PLACEMENT_TRIES // 2) == 0:
                contours = library.contours(int(groups[rng.integers(groups.size)]))
            drawn = rasterize(_moved(contours, rng, columns)).astype(bool)
            if on_strip is not None:
                drawn &= on_strip
            kept = drawn & ~occupied
            area = int(kept.sum())
            if area > best_area:
                best, best_area = kept, area
            # Accept a placement that overlaps no other class and keeps enough pixels on the strip.
            if area >= MIN_CLASS_AREA and area == int(drawn.sum()):
                break
        assert best is not None
        masks[class_id - 1] = best
        occupied |= best
    return masks


def sample_classes(rng: np.random.Generator, probabilities: np.ndarray) -> tuple[int, ...]:
    """Draw the set of classes present in one frame."""
    return combo_classes(int(rng.choice(probabilities.size, p=probabilities)))
