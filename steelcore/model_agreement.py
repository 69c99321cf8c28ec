"""How a shadow model compares with production: the one computation behind the health page's
"Models" section and the `steel models promote` gate.

Definitions (issue 16, the lifecycle design):
- A model *says* class c on a frame when its pixel count for c is > 0: production through a
  ``defects`` row of the frame, the shadow through ``shadow_results.pixel_counts[c - 1]``.
- Mask agreement per class is the mean Dice between production's and the shadow's masks over the
  shadowed frames, each (frame, class) pair counted, empty vs empty = 1 (Kaggle's rule, as in
  training.metrics). Alarm agreement is the share of shadowed frames where both or neither say c.
- Operator verdicts: a 'confirmed' verdict on (frame, class) means the class is truly there,
  'false' that it is not. Precision, recall and F1 of each model are counted over the verdict pairs
  of shadowed frames, so both models are scored on exactly the same pairs.
- F1 is 2TP / (2TP + FP + FN); when that denominator is 0 the model made no mistake on pairs that
  held nothing to find, so it scores 1 (like Dice's empty vs empty). Precision and recall are None
  where undefined: a ratio over nothing would read as a verdict it is not.

Every function here is pure (rows in, figures out) so the page and the gate cannot disagree;
steelcore.postgres.model_evidence.read_evidence is the one query that fetches those rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from steelcore import rle
from steelcore.severstal import FRAME_SHAPE

FramePair = tuple[str, int]  # (frame_id, class_id)


@dataclass(frozen=True)
class ShadowFrame:
    """One shadowed frame: production's stored masks and the shadow's answer."""

    frame_id: str
    production: Mapping[int, str]  # class_id -> RLE of production's defect (absent = nothing)
    shadow_rles: Sequence[str]  # index class_id - 1
    shadow_pixels: Sequence[int]  # index class_id - 1

    def shadow_says(self, class_id: int) -> bool:
        index = class_id - 1
        return 0 <= index < len(self.shadow_pixels) and int(self.shadow_pixels[index]) > 0

    def production_says(self, class_id: int) -> bool:
        return bool(self.production.get(class_id, "").strip())

    def shadow_rle(self, class_id: int) -> str:
        index = class_id - 1
        return self.shadow_rles[index] if 0 <= index < len(self.shadow_rles) else ""


@dataclass(frozen=True)
class VerdictRow:
    """The latest operator verdict on a production defect."""

    frame_id: str
    class_id: int
    verdict: str  # 'confirmed' | 'false'


@dataclass(frozen=True)
class ClassAgreement:
    class_id: int
    frames: int
    mean_dice: float | None  # None without frames
    alarm_agreement: float | None  # share of frames where both or neither say the class
    production_says: int
    shadow_says: int


@dataclass(frozen=True)
class Scores:
    pairs: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None  # None only without pairs


@dataclass(frozen=True)
class VerdictComparison:
    production: Scores
    shadow: Scores

    @property
    def pairs(self) -> int:
        return self.production.pairs


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


@dataclass(frozen=True)
class Evidence:
    """One shadow version's frames and verdicts (steelcore.postgres.model_evidence.read_evidence)."""

    frames: list[ShadowFrame] = field(default_factory=list)
    verdicts: list[VerdictRow] = field(default_factory=list)


def rle_dice(a: str, b: str, shape: tuple[int, int] = FRAME_SHAPE) -> float:
    """Dice of two Severstal RLE masks, straight from their runs (no decoding); empty vs empty = 1.
    Raises ValueError for a malformed string (steelcore.rle.parse)."""
    a_starts, a_lengths = rle.parse(a, shape)
    b_starts, b_lengths = rle.parse(b, shape)
    total = int(a_lengths.sum()) + int(b_lengths.sum())
    if total == 0:
        return 1.0
    return 2.0 * _overlap(a_starts, a_starts + a_lengths, b_starts, b_starts + b_lengths) / total


def _overlap(
    a_start: Sequence[int], a_end: Sequence[int], b_start: Sequence[int], b_end: Sequence[int]
) -> int:
    # Both run lists are sorted and disjoint (rle.parse checks it): one merge walk counts the overlap.
    i = j = inter = 0
    while i < len(a_start) and j < len(b_start):
        lo = max(a_start[i], b_start[j])
        hi = min(a_end[i], b_end[j])
        if hi > lo:
            inter += int(hi - lo)
        if a_end[i] <= b_end[j]:
            i += 1
        else:
            j += 1
    return inter


def mask_agreement(
    frames: Iterable[ShadowFrame], class_ids: Sequence[int], shape: tuple[int, int] = FRAME_SHAPE
) -> dict[int, ClassAgreement]:
    """Per class: mean Dice of the two models' masks and their alarm agreement over ``frames``."""
    frames = list(frames)
    out: dict[int, ClassAgreement] = {}
    for c in class_ids:
        dice = [rle_dice(f.production.get(c, ""), f.shadow_rle(c), shape) for f in frames]
        agree = sum(f.production_says(c) == f.shadow_says(c) for f in frames)
        n = len(frames)
        out[c] = ClassAgreement(
            class_id=c,
            frames=n,
            mean_dice=sum(dice) / n if n else None,
            alarm_agreement=agree / n if n else None,
            production_says=sum(f.production_says(c) for f in frames),
            shadow_says=sum(f.shadow_says(c) for f in frames),
        )
    return out


def verdict_truth(verdicts: Iterable[VerdictRow]) -> dict[FramePair, bool]:
    """(frame, class) -> True when operators confirmed the class is there, False when they said it
    is not. Rows come latest-first resolved by the query; should a pair appear twice, 'confirmed'
    wins only if every row says so (a doubtful pair is no evidence of a defect)."""
    truth: dict[FramePair, bool] = {}
    for v in verdicts:
        if v.verdict not in ("confirmed", "false"):
            raise ValueError(f"unknown verdict {v.verdict!r} on frame {v.frame_id} class {v.class_id}")
        key = (v.frame_id, int(v.class_id))
        truth[key] = truth.get(key, True) and v.verdict == "confirmed"
    return truth


def score(says: Iterable[FramePair], truth: Mapping[FramePair, bool]) -> Scores:
    """Confusion counts and precision / recall / F1 of a model's positive (frame, class) pairs
    against verdict pairs; pairs without a verdict are not counted."""
    positive = set(says)
    tp = fp = fn = tn = 0
    for pair, present in truth.items():
        said = pair in positive
        if said and present:
            tp += 1
        elif said:
            fp += 1
        elif present:
            fn += 1
        else:
            tn += 1
    pairs = len(truth)
    return Scores(
        pairs=pairs,
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / (tp + fn) if tp + fn else None,
        f1=(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 1.0) if pairs else None,
    )


def compare_verdicts(frames: Iterable[ShadowFrame], verdicts: Iterable[VerdictRow]) -> VerdictComparison:
    """Both models scored on the verdict pairs of the shadowed ``frames`` (other verdicts ignored)."""
    by_id = {f.frame_id: f for f in frames}
    truth = {pair: v for pair, v in verdict_truth(verdicts).items() if pair[0] in by_id}
    production = [(fid, c) for fid, c in truth if by_id[fid].production_says(c)]
    shadow = [(fid, c) for fid, c in truth if by_id[fid].shadow_says(c)]
    return VerdictComparison(production=score(production, truth), shadow=score(shadow, truth))


def promote_gate(comparison: VerdictComparison, min_verdicts: int) -> GateDecision:
    """The promotion gate: the candidate's F1 against operator verdicts must be at least
    production's on the same pairs, and there must be ``min_verdicts`` pairs to judge by."""
    if comparison.pairs < min_verdicts:
        return GateDecision(
            False,
            f"not enough evidence: {comparison.pairs} operator verdicts on shadowed frames, "
            f"the gate needs {min_verdicts}",
        )
    cand, prod = comparison.shadow.f1, comparison.production.f1
    assert cand is not None and prod is not None  # pairs > 0 here
    if cand < prod:
        return GateDecision(
            False,
            f"candidate F1 {cand:.3f} is below production's {prod:.3f} on {comparison.pairs} verdicts",
        )
    return GateDecision(
        True, f"candidate F1 {cand:.3f} >= production's {prod:.3f} on {comparison.pairs} verdicts"
    )


def audit_figures(
    agreement: Mapping[int, ClassAgreement],
    comparison: VerdictComparison,
    *,
    production_version: int | None = None,
    shadow_version: int | None = None,
) -> dict[str, Any]:
    """The figures stored with an audit row (model_audit.figures, JSON): agreement per class and
    both models' verdict scores at that moment."""
    return {
        "production_version": production_version,
        "shadow_version": shadow_version,
        "shadowed_frames": max((a.frames for a in agreement.values()), default=0),
        "agreement": {str(c): asdict(a) for c, a in sorted(agreement.items())},
        "verdicts": {"production": asdict(comparison.production), "shadow": asdict(comparison.shadow)},
    }
