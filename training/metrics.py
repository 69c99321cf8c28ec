"""Segmentation and detection metrics, vectorised in numpy and accumulated batch by batch.

Conventions (the ones the Kaggle Severstal leaderboard and the NEU-Seg papers use):

- Dice is computed per (image, class) pair and averaged over all pairs; a pair where both the
  prediction and the truth are empty scores 1 (Kaggle's rule, which is why an all-empty
  submission already scores 0.856).
- Pixel IoU / precision / recall / F1 are computed from TP/FP/FN summed over every pixel of the
  split (a dataset-level confusion matrix), not averaged per image.
- mIoU is the mean of the per-label IoUs over the classes *and* background, i.e. over the four
  labels {background, inclusion, patches, scratches} on NEU-Seg, as PGA-Net and the papers that
  compare with it report it. A pixel is predicted background when no class mask covers it.
- Image-level scores treat "class c has at least one pixel" as a binary detection per image.
- ROC AUC is rank based (Mann-Whitney U, ties get the average rank); it is undefined (NaN)
  when the labels hold only one class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    if pred.ndim != 4:
        raise ValueError(f"masks must be (N, C, H, W); got shape {pred.shape}")


def dice_scores(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of every (image, class) pair of two (N, C, H, W) masks -> float64 (N, C); empty/empty = 1."""
    _check_pair(pred, truth)
    p = pred.astype(bool)
    t = truth.astype(bool)
    inter = np.logical_and(p, t).sum(axis=(2, 3), dtype=np.int64)
    total = p.sum(axis=(2, 3), dtype=np.int64) + t.sum(axis=(2, 3), dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    return dice


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Kaggle's score: the mean Dice over all (image, class) pairs."""
    return float(dice_scores(pred, truth).mean())


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0 (the metric is undefined there)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """IoU, precision, recall and F1 from confusion counts (arrays of any shape); NaN where undefined."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    fn = np.asarray(fn, dtype=np.float64)
    return {
        "iou": _safe_ratio(tp, tp + fp + fn),
        "precision": _safe_ratio(tp, tp + fp),
        "recall": _safe_ratio(tp, tp + fn),
        "f1": _safe_ratio(2 * tp, 2 * tp + fp + fn),
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of values, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    _, first_idx, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    # Tied block starting at 0-based position s with k members spans ranks s+1 .. s+k.
    block_rank = first_idx + (counts + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(block_rank, counts)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of scores for binary labels (Mann-Whitney U with averaged ties); NaN if one class only."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _per_class(values: np.ndarray, class_ids: list[int]) -> dict[str, float | None]:
    return {str(cid): _nan_to_none(float(v)) for cid, v in zip(class_ids, values, strict=True)}


@dataclass
class SegmentationAccumulator:
    """Streams batches of (prediction, truth) masks and keeps only counts, never the masks.

    ``update`` takes bool/uint8 masks (B, C, H, W) and optionally per-(image, class) detection
    scores (B, C) such as classifier probabilities, kept (N x C floats) for the ROC AUC.
    """

    class_ids: list[int]
    dice_sum: np.ndarray = field(init=False)
    images: int = field(init=False, default=0)
    pixel_tp: np.ndarray = field(init=False)
    pixel_fp: np.ndarray = field(init=False)
    pixel_fn: np.ndarray = field(init=False)
    # Background as one more label, for mIoU over the labels (NEU-Seg papers' convention).
    background: np.ndarray = field(init=False)
    image_tp: np.ndarray = field(init=False)
    image_fp: np.ndarray = field(init=False)
    image_fn: np.ndarray = field(init=False)
    image_tn: np.ndarray = field(init=False)
    # Whole frames: "holds any defect" against "any class predicted" (what raises a reject).
    frame_counts: np.ndarray = field(init=False)  # tp, fp, fn, tn
    _scores: list[np.ndarray] = field(init=False, default_factory=list)
    _present: list[np.ndarray] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        c = len(self.class_ids)
        if c == 0:
            raise ValueError("class_ids is empty")
        self.dice_sum = np.zeros(c)
        for name in ("pixel_tp", "pixel_fp", "pixel_fn", "image_tp", "image_fp", "image_fn", "image_tn"):
            setattr(self, name, np.zeros(c, dtype=np.int64))
        self.background = np.zeros(3, dtype=np.int64)  # tp, fp, fn
        self.frame_counts = np.zeros(4, dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def update(self, pred: np.ndarray, truth: np.ndarray, scores: np.ndarray | None = None) -> None:
        _check_pair(pred, truth)
        if pred.shape[1] != self.num_classes:
            raise ValueError(f"masks have {pred.shape[1]} classes, expected {self.num_classes}")
        p = pred.astype(bool)
        t = truth.astype(bool)
        inter = np.logical_and(p, t).sum(axis=(2, 3), dtype=np.int64)  # (B, C)
        p_sum = p.sum(axis=(2, 3), dtype=np.int64)
        t_sum = t.sum(axis=(2, 3), dtype=np.int64)
        total = p_sum + t_sum
        dice = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
        self.dice_sum += dice.sum(axis=0)
        self.images += p.shape[0]

        self.pixel_tp += inter.sum(axis=0)
        self.pixel_fp += (p_sum - inter).sum(axis=0)
        self.pixel_fn += (t_sum - inter).sum(axis=0)

        p_bg = ~p.any(axis=1)
        t_bg = ~t.any(axis=1)
        bg_inter = int(np.logical_and(p_bg, t_bg).sum())
        self.background += np.array([bg_inter, int(p_bg.sum()) - bg_inter, int(t_bg.sum()) - bg_inter])

        p_img = p_sum > 0
        t_img = t_sum > 0
        self.image_tp += (p_img & t_img).sum(axis=0)
        self.image_fp += (p_img & ~t_img).sum(axis=0)
        self.image_fn += (~p_img & t_img).sum(axis=0)
        self.image_tn += (~p_img & ~t_img).sum(axis=0)
        p_frame, t_frame = p_img.any(axis=1), t_img.any(axis=1)
        self.frame_counts += np.array(
            [
                (p_frame & t_frame).sum(),
                (p_frame & ~t_frame).sum(),
                (~p_frame & t_frame).sum(),
                (~p_frame & ~t_frame).sum(),
            ]
        )

        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64)
            if scores.shape != p_img.shape:
                raise ValueError(f"scores shape {scores.shape} != (batch, classes) {p_img.shape}")
            self._scores.append(scores)
            self._present.append(t_img)

    def mean_dice(self) -> float:
        """Kaggle mean Dice over all (image, class) pairs seen so far."""
        if self.images == 0:
            raise ValueError("no images accumulated")
        return float(self.dice_sum.sum() / (self.images * self.num_classes))

    def auc_per_class(self) -> np.ndarray:
        if not self._scores:
            return np.full(self.num_classes, np.nan)
        scores = np.concatenate(self._scores)
        present = np.concatenate(self._present)
        return np.array([roc_auc(present[:, k], scores[:, k]) for k in range(self.num_classes)])

    def result(self) -> dict:
        """All metrics as JSON-ready values (None where a metric is undefined)."""
        pixel = scores_from_counts(self.pixel_tp, self.pixel_fp, self.pixel_fn)
        image = scores_from_counts(self.image_tp, self.image_fp, self.image_fn)
        bg_iou = float(scores_from_counts(*self.background)["iou"])
        label_ious = np.concatenate([[bg_iou], pixel["iou"]])
        ids = self.class_ids
        empty_pairs = self.image_fp + self.image_tn
        tp, fp, fn, _tn = (int(v) for v in self.frame_counts)
        frame = scores_from_counts(np.array([tp]), np.array([fp]), np.array([fn]))
        return {
            "images": self.images,
            "mean_dice": self.mean_dice(),
            # The score of answering "no defect" everywhere: the bar a model must clear on these frames.
            "empty_baseline_dice": float(empty_pairs.sum() / max(self.images * self.num_classes, 1)),
            # Share of defect-free (image, class) pairs that got a mask: false alarms on good steel.
            "false_mask_rate": _nan_to_none(float(self.image_fp.sum() / max(empty_pairs.sum(), 1)))
            if empty_pairs.sum()
            else None,
            "false_mask_rate_per_class": _per_class(
                np.where(empty_pairs > 0, self.image_fp / np.maximum(empty_pairs, 1), np.nan), ids
            ),
            "frame": {
                "defective": tp + fn,
                "defect_free": int(self.frame_counts[1] + self.frame_counts[3]),
                "precision": _nan_to_none(float(frame["precision"][0])),
                "recall": _nan_to_none(float(frame["recall"][0])),
            },
            "dice_per_class": _per_class(self.dice_sum / max(self.images, 1), ids),
            "pixel": {name: _per_class(pixel[name], ids) for name in ("iou", "precision", "recall", "f1")}
            | {
                "background_iou": _nan_to_none(bg_iou),
                # nanmean: a label absent from both prediction and truth has no IoU and is skipped.
                "miou_with_background": _nan_to_none(_nanmean(label_ious)),
                "miou_classes": _nan_to_none(_nanmean(pixel["iou"])),
            },
            "image": {name: _per_class(image[name], ids) for name in ("precision", "recall", "f1")}
            | {
                "support": {str(c): int(v) for c, v in zip(ids, self.image_tp + self.image_fn, strict=True)},
                "auc": _per_class(self.auc_per_class(), ids),
            },
        }


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan
