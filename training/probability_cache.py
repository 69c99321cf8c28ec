"""Validation outputs kept for the post-processing search, at a resolution that fits in memory.

Probabilities are cached as uint8 (p * 255) at a resolution reduced by an integer factor chosen so
that the cache fits ``cache_mb`` (factor 1 for a few hundred NEU frames, 2-4 for Severstal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from training.datasets import SteelDataset
    from training.model_bundle import ModelBundle

CACHE_MB = 512
CACHE_FACTORS = (1, 2, 4, 8)
BATCH_SIZE = 8


@dataclass
class ProbabilityCache:
    """Validation outputs at reduced resolution: uint8 probabilities (p * 255) and bool truth."""

    factor: int
    frame_area: int  # full-resolution pixels of the first frame, for the min-area grid
    seg: list[np.ndarray]  # per image (C, h, w) uint8
    truth: list[np.ndarray]  # per image (C, h, w) bool
    cls: np.ndarray | None  # (N, C) float32


def choose_cache_factor(images: int, classes: int, frame_shape: tuple[int, int], cache_mb: float) -> int:
    """Smallest downscale factor at which uint8 probabilities + bool truth fit cache_mb."""
    per_image = 2 * classes * frame_shape[0] * frame_shape[1]
    for factor in CACHE_FACTORS:
        if images * per_image / factor**2 <= cache_mb * 2**20:
            return factor
    return CACHE_FACTORS[-1]


def _shrink(stack: np.ndarray, factor: int) -> np.ndarray:
    """(C, H, W) float -> (C, H/f, W/f) by area averaging (cv2 resizes channels-last)."""
    if factor == 1:
        return stack
    c, h, w = stack.shape
    size = (max(1, w // factor), max(1, h // factor))
    out = cv2.resize(np.ascontiguousarray(stack.transpose(1, 2, 0)), size, interpolation=cv2.INTER_AREA)
    return out.reshape(size[1], size[0], c).transpose(2, 0, 1)


def collect_probabilities(
    bundle: ModelBundle,
    dataset: SteelDataset,
    cache_mb: float = CACHE_MB,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    factor: int | None = None,
) -> ProbabilityCache:
    """Run the networks over the dataset once and keep what the search needs (at a downscale factor
    chosen to fit cache_mb unless given)."""
    from tqdm import tqdm

    from training.inference import batches_by_shape, predict_probs

    first_shape = dataset[0][0].shape
    if factor is None:
        factor = choose_cache_factor(len(dataset), len(bundle.class_ids), first_shape, cache_mb)
    seg_cache: list[np.ndarray] = []
    truth_cache: list[np.ndarray] = []
    cls_rows: list[np.ndarray] = []
    samples = ((masks, image) for image, masks, _ in (dataset[i] for i in range(len(dataset))))
    with tqdm(total=len(dataset), desc="tune: inference", unit="frame", disable=not progress) as bar:
        for truths, frames in batches_by_shape(samples, batch_size):
            cls, seg = predict_probs(bundle, frames)
            for k in range(len(frames)):
                seg_cache.append(np.round(_shrink(seg[k], factor) * 255).astype(np.uint8))
                truth_cache.append(_shrink(truths[k].astype(np.float32), factor) >= 0.5)
            if cls is not None:
                cls_rows.append(cls)
            bar.update(len(frames))
    cls_all = np.concatenate(cls_rows).astype(np.float32) if cls_rows else None
    return ProbabilityCache(factor, first_shape[0] * first_shape[1], seg_cache, truth_cache, cls_all)


def merge_caches(caches: list[ProbabilityCache]) -> ProbabilityCache:
    """One cache of all frames of several (same factor, same classes, all with or all without gates)."""
    if not caches or len({c.factor for c in caches}) != 1:
        raise ValueError("merge_caches needs caches of one downscale factor")
    with_cls = [c.cls is not None for c in caches]
    if any(with_cls) and not all(with_cls):
        raise ValueError("merge_caches: some caches have classifier outputs and some do not")
    cls = np.concatenate([c.cls for c in caches if c.cls is not None]) if all(with_cls) else None
    return ProbabilityCache(
        caches[0].factor,
        caches[0].frame_area,
        [s for c in caches for s in c.seg],
        [t for c in caches for t in c.truth],
        cls,
    )


def subset_cache(cache: ProbabilityCache, indices: list[int]) -> ProbabilityCache:
    cls = None if cache.cls is None else cache.cls[indices]
    return ProbabilityCache(
        cache.factor,
        cache.frame_area,
        [cache.seg[i] for i in indices],
        [cache.truth[i] for i in indices],
        cls,
    )
