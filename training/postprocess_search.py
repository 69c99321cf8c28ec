"""Per-class post-processing search: (pixel threshold, minimum component area, classifier gate).

For each class the search is exhaustive over a small grid, maximising that class's mean Dice over
the validation images; because Kaggle's score is the mean over (image, class) pairs, maximising each
class separately maximises the total. Each pixel threshold costs one connected-component pass per
image; every (area, gate) pair after that is arithmetic on per-component counts, so the whole grid
is cheap. Minimum areas are in full-resolution pixels throughout. The per-class search ignores
overlap resolution (it couples classes); cached_mean_dice applies the complete post-processing,
overlaps included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from training.probability_cache import ProbabilityCache

if TYPE_CHECKING:
    from training.model_bundle import PostprocessParams

PIXEL_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
GATE_THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Minimum component areas as fractions of the frame (0.001 of 256x1600 is 410 px; of 200x200, 40 px).
MIN_AREA_FRACTIONS = (0.0, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.03)


@dataclass
class ClassChoice:
    pixel_threshold: float
    min_area: int
    gate_threshold: float
    dice: float
    raw_dice: float


def _components(cache: ProbabilityCache, c: int, threshold: float) -> tuple[np.ndarray, ...]:
    """For one class and pixel threshold: (image index, area, overlap with truth) of every component."""
    level = math.ceil(threshold * 255 - 1e-6)  # p >= t  <=>  round(p * 255) >= ceil(t * 255), to 1/255
    img_idx, areas, overlaps = [], [], []
    for i, (seg, truth) in enumerate(zip(cache.seg, cache.truth, strict=True)):
        mask = (seg[c] >= level).astype(np.uint8)
        if not mask.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        hit = np.bincount(labels[truth[c]], minlength=count)
        img_idx.append(np.full(count - 1, i))
        areas.append(stats[1:, cv2.CC_STAT_AREA])
        overlaps.append(hit[1:])
    if not areas:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(img_idx), np.concatenate(areas), np.concatenate(overlaps)


def search_class(
    cache: ProbabilityCache, c: int, gates: tuple[float, ...], min_areas: list[int]
) -> tuple[ClassChoice, np.ndarray]:
    """Best (pixel threshold, min area, gate) for class index c and the whole score grid [T, A, G]."""
    n = len(cache.seg)
    truth_sum = np.array([t[c].sum() for t in cache.truth], dtype=np.float64)
    scale = cache.factor**2  # cache pixels -> full-resolution pixels
    if cache.cls is not None:
        gate_open = cache.cls[:, c][None, :] >= np.asarray(gates, dtype=np.float32)[:, None]  # [G, N]
    else:
        gate_open = np.ones((1, n), dtype=bool)
    scores = np.zeros((len(PIXEL_THRESHOLDS), len(min_areas), len(gate_open)))
    for ti, threshold in enumerate(PIXEL_THRESHOLDS):
        img, area, hit = _components(cache, c, threshold)
        for ai, min_area in enumerate(min_areas):
            keep = area * scale >= min_area
            pred = np.bincount(img[keep], weights=area[keep], minlength=n)
            inter = np.bincount(img[keep], weights=hit[keep], minlength=n)
            pred_g, inter_g = pred * gate_open, inter * gate_open  # [G, N]
            total = pred_g + truth_sum
            dice = np.where(total == 0, 1.0, 2 * inter_g / np.maximum(total, 1e-9))
            scores[ti, ai] = dice.mean(axis=1)
    # Among ties (common on small or easy splits) keep the setting nearest the untuned one.
    ties = np.argwhere(scores >= scores.max() - 1e-12)
    ti, ai, gi = min(ties.tolist(), key=lambda idx: (abs(PIXEL_THRESHOLDS[idx[0]] - 0.5), idx[1], idx[2]))
    # A gate that changes nothing on these frames (the segmenter never finds the class here) is set as
    # high as the grid goes: the class then costs the cascade no segmentation unless the classifier is
    # sure, instead of holding every frame open for a class the model has not learned to find.
    if np.ptp(scores[ti, ai]) <= 1e-12:
        gi = len(gates) - 1
    raw = scores[PIXEL_THRESHOLDS.index(0.5), 0, 0]  # gates[0] and min_areas[0] are 0: no gate, no area
    gate = gates[gi] if cache.cls is not None else 0.0
    best = float(scores[ti, ai, gi])
    choice = ClassChoice(PIXEL_THRESHOLDS[ti], int(min_areas[ai]), float(gate), best, float(raw))
    return choice, scores


def cached_mean_dice(cache: ProbabilityCache, params: PostprocessParams, overlaps: bool = True) -> float:
    """Mean Dice on the cache after the complete post-processing (overlaps resolved unless told not to)."""
    from steelcore.postprocess import apply_postprocess
    from training.metrics import dice_scores
    from training.model_bundle import PostprocessParams

    cache_areas = [math.ceil(a / cache.factor**2) for a in params.min_area]
    scaled = PostprocessParams(params.gate_threshold, params.pixel_threshold, cache_areas)
    total = 0.0
    for i, (seg, truth) in enumerate(zip(cache.seg, cache.truth, strict=True)):
        cls = None if cache.cls is None else cache.cls[i : i + 1]
        probs = seg[None].astype(np.float32) / 255
        masks = apply_postprocess(cls, probs, scaled, overlaps=overlaps)
        total += float(dice_scores(masks, truth[None]).sum())
    return total / (len(cache.seg) * len(cache.truth[0]))


def search(cache: ProbabilityCache) -> tuple[PostprocessParams, list[ClassChoice]]:
    from training.model_bundle import PostprocessParams

    if not cache.seg:
        raise ValueError("no validation images to tune on")
    num_classes = cache.seg[0].shape[0]
    min_areas = sorted({round(f * cache.frame_area) for f in MIN_AREA_FRACTIONS})
    gates = GATE_THRESHOLDS if cache.cls is not None else (0.0,)
    choices = [search_class(cache, c, gates, min_areas)[0] for c in range(num_classes)]
    params = PostprocessParams(
        gate_threshold=[ch.gate_threshold for ch in choices],
        pixel_threshold=[ch.pixel_threshold for ch in choices],
        min_area=[ch.min_area for ch in choices],
    )
    return params, choices
