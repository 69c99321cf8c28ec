"""Turn classifier and segmenter probabilities into defect masks.

Pure numpy + OpenCV (no torch): the same function runs in training/evaluation and inside
Triton's python-backend postprocess model, so a model scores the same offline and in serving.

Order of operations, per class c:
1. pixel threshold: a pixel is positive when its probability is at least ``pixel_threshold[c]``;
2. classifier gate: the whole class is cleared in a frame when the classifier's probability for
   it is below ``gate_threshold[c]`` (0 disables the gate; so does passing ``cls_probs=None``);
3. minimum area: 8-connected components smaller than ``min_area[c]`` pixels are removed;
4. overlaps (on by default): Severstal and NEU masks never overlap, so a pixel claimed by
   several classes keeps only the class with the highest segmenter probability. This runs last
   so that steps 1-3 stay per-class (what `steel tune` optimises class by class).

Segmenter maps come as float probabilities in [0, 1] (``predict_probs``) or as uint8 codes
round(255 p), which the served segmenter answers (a quarter of the bytes); a code c stands for
c / 255, and both give the same masks for the same probabilities up to that rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # model_bundle imports torch; Triton's postprocess model must not.
    from training.model_bundle import PostprocessParams

# Full scale of the uint8 probability codes the served segmenter answers: code = round(255 p).
PROBABILITY_CODES = 255


def probabilities(seg_probs: np.ndarray) -> np.ndarray:
    """float32 probabilities from float probabilities or uint8 codes (see the module doc)."""
    seg_probs = np.asarray(seg_probs)
    if seg_probs.dtype == np.uint8:
        return seg_probs.astype(np.float32) / np.float32(PROBABILITY_CODES)
    return seg_probs.astype(np.float32, copy=False)


def _pixel_thresholds(params: PostprocessParams, dtype: np.dtype) -> np.ndarray:
    thresholds = np.asarray(params.pixel_threshold, dtype=np.float32).reshape(1, -1, 1, 1)
    if dtype == np.uint8:
        # The lowest code whose probability (as ``probabilities`` computes it, in float32) meets
        # the threshold: codes then give exactly the masks of their float probabilities, also for
        # thresholds tuned on such probabilities (k / 255 in float32 is not k / 255).
        scale = probabilities(np.arange(PROBABILITY_CODES + 1, dtype=np.uint8))
        return np.searchsorted(scale, thresholds, side="left")
    return thresholds


def _validate(cls_probs: np.ndarray | None, seg_probs: np.ndarray, params: PostprocessParams) -> None:
    if seg_probs.ndim != 4:
        raise ValueError(f"seg_probs must be [B, C, H, W]; got shape {seg_probs.shape}")
    b, c = seg_probs.shape[:2]
    for name in ("gate_threshold", "pixel_threshold", "min_area"):
        values = getattr(params, name)
        if len(values) != c:
            raise ValueError(f"postprocess {name} has {len(values)} entries for {c} classes")
    if cls_probs is not None and cls_probs.shape != (b, c):
        raise ValueError(f"cls_probs shape {cls_probs.shape} does not match (batch, classes) = ({b}, {c})")


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """A 2-D bool/uint8 mask without its 8-connected components of fewer than min_area pixels."""
    mask = mask.astype(np.uint8, copy=False)
    if min_area <= 1 or not mask.any():
        return mask.astype(bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels] if count > 1 else np.zeros(mask.shape, dtype=bool)


def resolve_overlaps(masks: np.ndarray, seg_probs: np.ndarray) -> np.ndarray:
    """Bool masks [B, C, H, W] where each pixel keeps at most one class: the most probable positive one."""
    overlap = masks.sum(axis=1) > 1
    if not overlap.any():
        return masks
    # -1 is below every probability and every code.
    winner = np.where(masks, seg_probs.astype(np.float32, copy=False), -1.0).argmax(axis=1)
    classes = np.arange(masks.shape[1]).reshape(1, -1, 1, 1)
    return masks & ((classes == winner[:, None]) | ~overlap[:, None])


def apply_postprocess(
    cls_probs: np.ndarray | None,
    seg_probs: np.ndarray,
    params: PostprocessParams,
    *,
    overlaps: bool = True,
) -> np.ndarray:
    """Masks uint8 0/1 [B, C, H, W] from seg_probs [B, C, H, W] (float probabilities or uint8
    codes) and optional cls_probs [B, C].

    ``overlaps=False`` leaves pixels claimed by several classes as they are.
    """
    seg_probs = np.asarray(seg_probs)
    _validate(cls_probs, seg_probs, params)
    masks = seg_probs >= _pixel_thresholds(params, seg_probs.dtype)
    if cls_probs is not None:
        open_gate = np.asarray(cls_probs) >= np.asarray(params.gate_threshold, dtype=np.float32)
        masks &= open_gate[:, :, None, None]
    for c, min_area in enumerate(params.min_area):
        if min_area > 1:
            for b in range(masks.shape[0]):
                masks[b, c] = remove_small_components(masks[b, c], int(min_area))
    if overlaps:
        masks = resolve_overlaps(masks, seg_probs)
    return masks.astype(np.uint8)


def class_areas(masks: np.ndarray) -> np.ndarray:
    """Pixel count of every (frame, class) of masks [B, C, H, W] -> int64 [B, C]."""
    if masks.ndim != 4:
        raise ValueError(f"masks must be [B, C, H, W]; got shape {masks.shape}")
    return np.count_nonzero(masks, axis=(2, 3)).astype(np.int64)
