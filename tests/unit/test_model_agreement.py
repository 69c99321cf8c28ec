"""steelcore.model_agreement: the figures the health page shows and the promote gate judges by."""

from __future__ import annotations

import numpy as np
import pytest

from steelcore import model_agreement as ma
from steelcore import rle
from training.metrics import dice_scores

SHAPE = (8, 10)


def _frame(frame_id: str, production: dict[int, str], shadow: list[str]) -> ma.ShadowFrame:
    pixels = [int(rle.parse(s, SHAPE)[1].sum()) for s in shadow]
    return ma.ShadowFrame(frame_id, production, shadow, pixels)


def test_rle_dice_matches_dense_dice_on_random_masks() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        a = (rng.random(SHAPE) < rng.random()).astype(np.uint8)
        b = (rng.random(SHAPE) < rng.random()).astype(np.uint8)
        dense = dice_scores(a[None, None], b[None, None])[0, 0]
        assert ma.rle_dice(rle.encode(a), rle.encode(b), SHAPE) == pytest.approx(dense)


def test_rle_dice_edge_cases() -> None:
    assert ma.rle_dice("", "", SHAPE) == 1.0
    assert ma.rle_dice("1 4", "", SHAPE) == 0.0
    assert ma.rle_dice("1 4", "3 4", SHAPE) == pytest.approx(2 * 2 / 8)
    with pytest.raises(ValueError, match="malformed"):
        ma.rle_dice("1 x", "", SHAPE)


def test_mask_agreement_per_class() -> None:
    frames = [
        _frame("a", {1: "1 4"}, ["1 4", "", "", ""]),  # class 1 both, identical
        _frame("b", {1: "1 4", 3: "10 2"}, ["", "", "10 2", "5 5"]),  # class 1 only prod, 4 only shadow
    ]
    agreement = ma.mask_agreement(frames, [1, 2, 3, 4], SHAPE)
    assert agreement[1].mean_dice == pytest.approx(0.5)
    assert agreement[1].alarm_agreement == pytest.approx(0.5)
    assert (agreement[1].production_says, agreement[1].shadow_says) == (2, 1)
    assert agreement[2].mean_dice == 1.0 and agreement[2].alarm_agreement == 1.0
    assert agreement[3].mean_dice == 1.0
    assert agreement[4].mean_dice == pytest.approx(0.5) and agreement[4].alarm_agreement == 0.5
    empty = ma.mask_agreement([], [1], SHAPE)[1]
    assert empty.frames == 0 and empty.mean_dice is None and empty.alarm_agreement is None


def test_scores_and_comparison_use_the_same_pairs() -> None:
    frames = [
        _frame("a", {1: "1 4", 2: "20 3"}, ["1 4", "", "", ""]),
        _frame("b", {1: "1 4"}, ["1 4", "", "", ""]),
        _frame("c", {}, ["", "", "3 3", ""]),
    ]
    verdicts = [
        ma.VerdictRow("a", 1, "confirmed"),
        ma.VerdictRow("a", 2, "false"),  # production false alarm, shadow rightly silent
        ma.VerdictRow("b", 1, "false"),  # both wrong
        ma.VerdictRow("z", 1, "confirmed"),  # frame not shadowed: ignored
    ]
    comparison = ma.compare_verdicts(frames, verdicts)
    assert comparison.pairs == 3
    prod, shadow = comparison.production, comparison.shadow
    assert (prod.tp, prod.fp, prod.fn, prod.tn) == (1, 2, 0, 0)
    assert (shadow.tp, shadow.fp, shadow.fn, shadow.tn) == (1, 1, 0, 1)
    assert prod.precision == pytest.approx(1 / 3) and prod.recall == 1.0
    assert prod.f1 == pytest.approx(2 / 4)
    assert shadow.f1 == pytest.approx(2 / 3)


def test_score_without_positives() -> None:
    nothing = ma.score([], {("a", 1): False})
    assert nothing.precision is None and nothing.recall is None and nothing.f1 == 1.0
    assert ma.score([], {}).f1 is None
    missed = ma.score([], {("a", 1): True})
    assert missed.f1 == 0.0 and missed.recall == 0.0 and missed.precision is None


def test_verdict_truth_rejects_unknown_and_doubt_is_not_confirmation() -> None:
    with pytest.raises(ValueError, match="unknown verdict"):
        ma.verdict_truth([ma.VerdictRow("a", 1, "maybe")])
    truth = ma.verdict_truth([ma.VerdictRow("a", 1, "confirmed"), ma.VerdictRow("a", 1, "false")])
    assert truth == {("a", 1): False}


def _comparison(prod_f1_pairs: list[tuple[bool, bool]], shadow_says: list[bool]) -> ma.VerdictComparison:
    truth = {(str(i), 1): present for i, (present, _) in enumerate(prod_f1_pairs)}
    prod = [(str(i), 1) for i, (_, said) in enumerate(prod_f1_pairs) if said]
    shadow = [(str(i), 1) for i, said in enumerate(shadow_says) if said]
    return ma.VerdictComparison(ma.score(prod, truth), ma.score(shadow, truth))


def test_gate_needs_evidence_and_an_f1_at_least_production() -> None:
    # Production said every pair (verdicts only exist on its defects); half were false alarms.
    pairs = [(i % 2 == 0, True) for i in range(10)]
    better = _comparison(pairs, [i % 2 == 0 for i in range(10)])
    worse = _comparison(pairs, [False] * 10)
    equal = _comparison(pairs, [True] * 10)
    assert ma.promote_gate(better, 10).passed
    assert ma.promote_gate(equal, 10).passed
    refused = ma.promote_gate(worse, 10)
    assert not refused.passed and "below production" in refused.reason
    few = ma.promote_gate(better, 11)
    assert not few.passed and few.reason.startswith("not enough evidence")


def test_audit_figures_are_json() -> None:
    import json

    frames = [_frame("a", {1: "1 4"}, ["1 4", "", "", ""])]
    figures = ma.audit_figures(
        ma.mask_agreement(frames, [1, 2, 3, 4], SHAPE),
        ma.compare_verdicts(frames, [ma.VerdictRow("a", 1, "confirmed")]),
        production_version=1,
        shadow_version=2,
    )
    again = json.loads(json.dumps(figures))
    assert again["shadowed_frames"] == 1
    assert again["agreement"]["1"]["mean_dice"] == 1.0
    assert again["verdicts"]["shadow"]["tp"] == 1
