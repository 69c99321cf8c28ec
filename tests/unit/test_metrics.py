"""Metrics against cases computed by hand (or by brute force) in the test itself."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from training.metrics import SegmentationAccumulator, dice_scores, mean_dice, roc_auc, scores_from_counts


def _masks(*per_class: list[list[int]]) -> np.ndarray:
    """One image, one 2-D mask per class -> (1, C, H, W) uint8."""
    return np.array(per_class, dtype=np.uint8)[None]


def test_dice_hand_computed_and_empty_pairs() -> None:
    pred = _masks([[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]])
    truth = _masks([[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]])
    # class 1: overlap 1, sizes 2 + 1 -> 2/3; class 2: empty/empty -> 1; class 3: false alarm -> 0
    np.testing.assert_allclose(dice_scores(pred, truth), [[2 / 3, 1.0, 0.0]])
    assert mean_dice(pred, truth) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_dice_missed_defect_scores_zero_and_shapes_checked() -> None:
    pred = _masks([[0, 0], [0, 0]])
    truth = _masks([[0, 1], [1, 1]])
    assert dice_scores(pred, truth)[0, 0] == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice_scores(pred, truth[:, :, :1])


def test_scores_from_counts_hand_computed_and_undefined() -> None:
    s = scores_from_counts(np.array([3, 0]), np.array([1, 0]), np.array([2, 0]))
    assert s["iou"][0] == pytest.approx(3 / 6)
    assert s["precision"][0] == pytest.approx(3 / 4)
    assert s["recall"][0] == pytest.approx(3 / 5)
    assert s["f1"][0] == pytest.approx(6 / 9)
    assert all(math.isnan(s[k][1]) for k in s)


def _brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels]
    neg = scores[~labels]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # rounding makes many ties
    assert roc_auc(labels, scores) == pytest.approx(_brute_force_auc(labels, scores))


def test_auc_extremes_and_single_class() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(roc_auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))


def test_accumulator_hand_computed_two_batches() -> None:
    acc = SegmentationAccumulator(class_ids=[1, 2])
    # image A: class 1 pred 2 px (1 correct), truth 1 px; class 2 nothing anywhere
    pred_a = _masks([[1, 1], [0, 0]], [[0, 0], [0, 0]])
    truth_a = _masks([[1, 0], [0, 0]], [[0, 0], [0, 0]])
    # image B: class 1 nothing predicted, truth 1 px; class 2 pred 1 px where truth is 2 px
    pred_b = _masks([[0, 0], [0, 0]], [[0, 0], [0, 1]])
    truth_b = _masks([[0, 0], [1, 0]], [[0, 1], [0, 1]])
    acc.update(pred_a, truth_a, scores=np.array([[0.9, 0.1]]))
    acc.update(pred_b, truth_b, scores=np.array([[0.2, 0.7]]))
    r = acc.result()

    assert r["images"] == 2
    # Dice pairs: A1 = 2/3, A2 = 1 (empty/empty), B1 = 0, B2 = 2*1/3
    assert r["mean_dice"] == pytest.approx((2 / 3 + 1 + 0 + 2 / 3) / 4)
    assert r["dice_per_class"]["1"] == pytest.approx((2 / 3 + 0) / 2)
    # class 1 pixels: TP 1, FP 1, FN 1; class 2: TP 1, FP 0, FN 1
    assert r["pixel"]["iou"]["1"] == pytest.approx(1 / 3)
    assert r["pixel"]["iou"]["2"] == pytest.approx(1 / 2)
    assert r["pixel"]["precision"]["2"] == pytest.approx(1.0)
    assert r["pixel"]["recall"]["2"] == pytest.approx(0.5)
    # background: pred bg A 2 px, B 3 px; truth bg A 3, B 1; both bg A 2, B 1 -> TP 3, FP 2, FN 1
    assert r["pixel"]["background_iou"] == pytest.approx(3 / 6)
    assert r["pixel"]["miou_with_background"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert r["pixel"]["miou_classes"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # image level class 1: A predicted & present (TP), B missed (FN); class 2: A TN, B TP
    assert r["image"]["precision"]["1"] == pytest.approx(1.0)
    assert r["image"]["recall"]["1"] == pytest.approx(0.5)
    assert r["image"]["support"] == {"1": 2, "2": 1}
    assert r["image"]["auc"]["1"] is None  # class 1 present in both images: AUC undefined
    assert r["image"]["auc"]["2"] == pytest.approx(1.0)


def test_accumulator_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(7)
    pred = rng.random((9, 3, 5, 6)) < 0.2
    truth = rng.random((9, 3, 5, 6)) < 0.2
    truth[2] = False
    pred[2] = False  # an all-empty image scores 1 on every class
    acc = SegmentationAccumulator(class_ids=[1, 2, 3])
    for start in range(0, 9, 4):
        acc.update(pred[start : start + 4], truth[start : start + 4])
    assert acc.mean_dice() == pytest.approx(mean_dice(pred, truth))
    tp = (pred & truth).sum(axis=(0, 2, 3))
    union = (pred | truth).sum(axis=(0, 2, 3))
    for k in range(3):
        assert acc.result()["pixel"]["iou"][str(k + 1)] == pytest.approx(tp[k] / union[k])


def test_accumulator_rejects_wrong_class_count() -> None:
    acc = SegmentationAccumulator(class_ids=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="classes"):
        acc.update(np.zeros((1, 3, 2, 2)), np.zeros((1, 3, 2, 2)))
