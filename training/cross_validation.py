"""K-fold cross-validation over a few labelled real frames: `steel train all --cv DIR --folds 5`.

With a few dozen real frames no validation split is both honest and large enough, so every choice is
made by cross-validation and every reported number comes from frames that took no part in it:

1. The frames of the cross-validated dataset are dealt into folds, each frame in exactly one, with
   the class mix stratified (so every fold holds some scratches and some patches).
2. Per fold, both networks train on the other folds plus the other datasets (e.g. synthetic frames),
   keeping the last epoch (picking an epoch on the held-out fold would leak it into the choice), and
   predict the held-out fold: out-of-fold probabilities for every real frame.
3. Nested tuning: for each fold, post-processing (gates, pixel thresholds, minimum areas) is tuned on
   the other folds' out-of-fold probabilities and applied to this fold. The scores of these
   predictions are the reported cross-validated figures.
4. The shipped post-processing is tuned on all out-of-fold probabilities; the shipped networks are
   trained on all frames with the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets import SteelDataset
from training.mixed_data import MixedDataset
from training.probability_cache import ProbabilityCache

log = logging.getLogger(__name__)

CV_FILE = "cross_validation.json"


def assign_folds(image_ids: Sequence[str], presence: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per frame: stratified by the frame's class set, stable (a hash of the id, not its
    position), each frame in exactly one fold."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds; got {folds}")
    if len(image_ids) < folds:
        raise ValueError(f"{len(image_ids)} frames cannot be split into {folds} folds")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids must be unique to be split into folds")
    presence = np.asarray(presence, dtype=bool)

    def key(i: int) -> bytes:
        return hashlib.sha1(f"{seed}:{image_ids[i]}".encode()).digest()

    # Rarest class sets first, so the few frames of a rare class spread over different folds.
    signatures: dict[tuple[bool, ...], list[int]] = {}
    for i, row in enumerate(presence):
        signatures.setdefault(tuple(row.tolist()), []).append(i)
    groups = sorted(signatures.values(), key=lambda g: (len(g), key(g[0])))
    out = np.empty(len(image_ids), dtype=np.int64)
    counter = 0
    for group in groups:
        for i in sorted(group, key=key):
            out[i] = counter % folds
            counter += 1
    return out


@dataclass
class FoldPlan:
    fold: int
    train: MixedDataset
    heldout: SteelDataset
    heldout_indices: list[int]  # into the cross-validated dataset


def plan_folds(
    mixed: MixedDataset,
    cv_part: int,
    folds: int,
    seed: int,
    synthetic_on_real: float = 0.0,
    real_paste: float = 0.0,
) -> tuple[list[FoldPlan], np.ndarray]:
    """Training and held-out data per fold, the cross-validated dataset being part cv_part of mixed.

    synthetic_on_real > 0 adds synthetic defects painted on the fold's own training frames, drawn
    that many times per real training frame and epoch (never on held-out frames); real_paste > 0
    likewise adds the fold's training frames with real defects of its other training frames pasted in.
    """
    target = mixed.parts[cv_part]
    assignment = assign_folds(target.image_ids, target.class_presence(), folds, seed)
    plans = []
    for k in range(folds):
        kept = [i for i in range(len(target)) if assignment[i] != k]
        held = [i for i in range(len(target)) if assignment[i] == k]
        parts = [target.subset(kept) if p == cv_part else part for p, part in enumerate(mixed.parts)]
        train = with_variants(
            MixedDataset(parts, mixed.factors, "train"), cv_part, synthetic_on_real, real_paste, seed
        )
        plans.append(FoldPlan(k, train, target.subset(held), held))
    return plans, assignment


def nested_predictions(
    cache: ProbabilityCache, assignment: np.ndarray, search: Callable[[ProbabilityCache], Any]
) -> tuple[list[Any], dict[int, Any]]:
    """Post-processing per fold tuned on the other folds only: (params per fold, frame index -> params)."""
    from training.probability_cache import subset_cache

    per_fold, per_frame = [], {}
    for k in sorted(set(assignment.tolist())):
        others = [i for i in range(len(assignment)) if assignment[i] != k]
        params, _choices = search(subset_cache(cache, others))
        per_fold.append(params)
        for i in np.flatnonzero(assignment == k):
            per_frame[int(i)] = params
    return per_fold, per_frame


def score_cache(
    cache: ProbabilityCache, params_of: Callable[[int], Any], class_ids: list[int]
) -> dict[str, dict[str, Any]]:
    """Raw and post-processed metrics of cached probabilities (params chosen per frame)."""
    from steelcore.postprocess import apply_postprocess
    from training.metrics import SegmentationAccumulator
    from training.model_bundle import PostprocessParams

    if cache.factor != 1:
        raise ValueError("cross-validated scores need full-resolution probabilities (cache factor 1)")
    views = {
        "raw": SegmentationAccumulator(list(class_ids)),
        "postprocessed": SegmentationAccumulator(list(class_ids)),
    }
    for i, (seg_u8, truth) in enumerate(zip(cache.seg, cache.truth, strict=True)):
        seg = seg_u8[None].astype(np.float32) / 255
        cls = None if cache.cls is None else cache.cls[i : i + 1]
        scores = cls if cls is not None else seg.max(axis=(2, 3))
        params: PostprocessParams = params_of(i)
        views["raw"].update(seg >= 0.5, truth[None], scores)
        views["postprocessed"].update(apply_postprocess(cls, seg, params), truth[None], scores)
    return {name: acc.result() for name, acc in views.items()}


def fold_curves(run_dirs: Sequence[Path]) -> dict[str, list[float]]:
    """Mean over folds of each epoch's held-out score (segmenter Dice at 0.5 / classifier AUC)."""
    rows = []
    for run in run_dirs:
        metrics = json.loads((run / "metrics.json").read_text())
        key = "val_mean_dice" if metrics["task"] == "segmenter" else "val_mean_auc"
        rows.append([e.get(key) for e in metrics["epochs"]])
    epochs = min(len(r) for r in rows)
    mean = [
        float(np.mean([r[e] for r in rows if r[e] is not None]))
        if any(r[e] is not None for r in rows)
        else None
        for e in range(epochs)
    ]
    return {"epoch": list(range(1, epochs + 1)), "mean_heldout_score": mean}  # type: ignore[dict-item]


def with_synthetic_on_real(mixed: MixedDataset, part: int, per_frame: float, seed: int) -> MixedDataset:
    """mixed plus a part of synthetic defects painted on the frames of mixed.parts[part]."""
    from training.mixed_data import SyntheticOnReal

    if per_frame <= 0:
        return mixed
    copies = SYNTHETIC_COPIES
    painted = SyntheticOnReal(mixed.parts[part], copies=copies, seed=seed)
    return MixedDataset([*mixed.parts, painted], [*mixed.factors, per_frame / copies], mixed.split)


def with_variants(
    mixed: MixedDataset, part: int, synthetic_on_real: float, real_paste: float, seed: int
) -> MixedDataset:
    """mixed plus the painted (synthetic defects) and pasted (real defects) variants of mixed.parts[part]."""
    from training.real_paste import RealDefectPaste

    mixed = with_synthetic_on_real(mixed, part, synthetic_on_real, seed)
    if real_paste <= 0:
        return mixed
    pasted = RealDefectPaste(mixed.parts[part], copies=SYNTHETIC_COPIES, seed=seed)
    return MixedDataset([*mixed.parts, pasted], [*mixed.factors, real_paste / SYNTHETIC_COPIES], mixed.split)


# Distinct painted variants kept per real frame (the epoch draws among them).
SYNTHETIC_COPIES = 4
