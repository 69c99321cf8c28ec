"""`steel tune`: pick per-class post-processing on the validation split and write a model bundle.

For each class the search is exhaustive over a small grid of (pixel threshold, minimum component
area, classifier gate), maximising that class's mean Dice over the validation images; because
Kaggle's score is the mean over (image, class) pairs, maximising each class separately maximises
the total. Each pixel threshold costs one connected-component pass per image; every (area, gate)
pair after that is arithmetic on per-component counts, so the whole grid is cheap.

Memory: probabilities are cached as uint8 (p * 255) at a resolution reduced by an integer factor
chosen so that the cache fits ``cache_mb`` (factor 1 for a few hundred NEU frames, 2-4 for
Severstal). Minimum areas are expressed in full-resolution pixels throughout. The per-class search
ignores overlap resolution (it couples classes); the reported "tuned" Dice applies the complete
post-processing, overlaps included, to the cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from steelcore import exit_codes

if TYPE_CHECKING:
    from training.datasets import SteelDataset
    from training.model_bundle import ModelBundle, PostprocessParams

log = logging.getLogger(__name__)

PIXEL_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
GATE_THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Minimum component areas as fractions of the frame (0.001 of 256x1600 is 410 px; of 200x200, 40 px).
MIN_AREA_FRACTIONS = (0.0, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.03)
CACHE_MB = 512
CACHE_FACTORS = (1, 2, 4, 8)
BATCH_SIZE = 8


# ----------------------------------------------------------------------------- run directories
@dataclass
class TrainingRun:
    path: Path
    task: str
    net: dict[str, Any]
    class_ids: list[int]
    seed: int | None
    state: dict[str, Any]


def load_run(run_dir: str | Path, task: str) -> TrainingRun:
    """A `steel train` run directory (config.json + model.pt); ValueError naming what is wrong."""
    import torch

    path = Path(run_dir)
    config_path, weights = path / "config.json", path / "model.pt"
    for required in (config_path, weights):
        if not required.is_file():
            raise ValueError(f"training run {path} has no {required.name}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
    if config.get("task") != task:
        raise ValueError(f"{path} is a {config.get('task')!r} run, expected a {task} run")
    for key in ("net", "class_ids"):
        if key not in config:
            raise ValueError(f"{config_path} is missing {key!r}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    seed = config.get("seed")
    return TrainingRun(path, task, config["net"], [int(c) for c in config["class_ids"]], seed, state)


def _build(run: TrainingRun) -> Any:
    from training.networks import build_model

    model = build_model(run.task, run.net)  # type: ignore[arg-type]
    try:
        model.load_state_dict(run.state)
    except RuntimeError as exc:
        raise ValueError(f"{run.path / 'model.pt'} does not match {run.path / 'config.json'}: {exc}") from exc
    return model.eval()


# ----------------------------------------------------------------------------- probability cache
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


# ----------------------------------------------------------------------------- grid search
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


# ----------------------------------------------------------------------------- the job
def _check_classes(label: str, ids: list[int], expected: list[int]) -> None:
    if ids != expected:
        raise ValueError(f"{label} predicts classes {ids} but the dataset has classes {expected}")


def format_table(class_ids: list[int], names: dict[int, str], choices: list[ClassChoice]) -> str:
    header = ("class", "gate", "pixel", "min_area", "raw Dice", "tuned Dice", "gain")
    lines = ["{:<16} {:>5} {:>6} {:>8} {:>9} {:>10} {:>7}".format(*header)]
    for cid, ch in zip(class_ids, choices, strict=True):
        label = f"{cid} {names.get(cid, '')}"[:16]
        lines.append(
            f"{label:<16} {ch.gate_threshold:>5.2f} {ch.pixel_threshold:>6.2f} {ch.min_area:>8d} "
            f"{ch.raw_dice:>9.4f} {ch.dice:>10.4f} {ch.dice - ch.raw_dice:>+7.4f}"
        )
    return "\n".join(lines)


def tune_and_save(
    classifier_run: str | Path | None,
    segmenter_run: str | Path,
    data: str | Path | list[str],
    out: str | Path,
    name: str | None = None,
    *,
    description: str | None = None,
    cache_mb: float = CACHE_MB,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Tune post-processing on data's val split, write the bundle to out and return its path."""
    from training.mixed_data import open_mixed
    from training.model_bundle import ModelBundle, PostprocessParams, save_bundle
    from training.run_config import resolved_specs

    dataset = open_mixed(data if isinstance(data, list) else [str(data)], split="val")
    if len(dataset) == 0:
        raise ValueError(f"the val split of {data} is empty: tuning needs validation images")
    seg_run = load_run(segmenter_run, "segmenter")
    _check_classes(f"segmenter run {seg_run.path}", seg_run.class_ids, dataset.class_ids)
    cls_run = None
    if classifier_run is not None:
        cls_run = load_run(classifier_run, "classifier")
        _check_classes(f"classifier run {cls_run.path}", cls_run.class_ids, dataset.class_ids)
    out = Path(out)
    name = name or out.name
    bundle = ModelBundle(
        name=name,
        path=out,
        meta={},
        class_ids=dataset.class_ids,
        class_names=dataset.class_names,
        classifier=_build(cls_run).to(device) if cls_run else None,
        segmenter=_build(seg_run).to(device),
        postprocess=PostprocessParams.neutral(dataset.num_classes),
    )
    cache = collect_probabilities(bundle, dataset, cache_mb, batch_size, progress)
    params, choices = search(cache)
    # Raw = the network output at 0.5: no gate, no minimum area, overlaps left as they are.
    raw_dice = cached_mean_dice(cache, PostprocessParams.neutral(dataset.num_classes), overlaps=False)
    tuned_dice = cached_mean_dice(cache, params)

    provenance = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": resolved_specs(data if isinstance(data, list) else [str(data)]),
        "classifier_run": str(cls_run.path.resolve()) if cls_run else None,
        "segmenter_run": str(seg_run.path.resolve()),
        "seed": {"classifier": cls_run.seed if cls_run else None, "segmenter": seg_run.seed},
        "tuning": {
            "split": "val",
            "images": len(dataset),
            "cache_downscale": cache.factor,
            "grid": {
                "pixel_threshold": list(PIXEL_THRESHOLDS),
                "gate_threshold": list(GATE_THRESHOLDS) if cls_run else [0.0],
                "min_area_fraction_of_frame": list(MIN_AREA_FRACTIONS),
            },
            "val_mean_dice_raw": raw_dice,
            "val_mean_dice_tuned": tuned_dice,
        },
    }
    kind = "classifier-gated ResUNet" if cls_run else "ResUNet"
    save_bundle(
        out,
        name=name,
        description=description or f"{kind} on {dataset.root.name} ({dataset.num_classes} classes)",
        class_ids=dataset.class_ids,
        class_names=dataset.class_names,
        classifier_config=cls_run.net if cls_run else None,
        classifier_state=cls_run.state if cls_run else None,
        segmenter_config=seg_run.net,
        segmenter_state=seg_run.state,
        postprocess=params,
        provenance=provenance,
    )
    print(format_table(dataset.class_ids, dataset.class_names, choices))
    print(
        f"val mean Dice over (image, class), {len(dataset)} images at 1/{cache.factor} resolution: "
        f"raw {raw_dice:.4f} -> tuned {tuned_dice:.4f} ({tuned_dice - raw_dice:+.4f})"
    )
    print(f"bundle written to {out}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classifier", type=Path, help="classifier run dir (omit: no gating, e.g. NEU-Seg)")
    parser.add_argument("--segmenter", type=Path, required=True, help="segmenter run dir (steel train --out)")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder; its val split is used")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write, e.g. models/default")
    parser.add_argument("--name", help="bundle name (default: the --out folder name)")
    parser.add_argument("--description", help="one-line description stored in model.json")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--device", default="cpu", help="torch device for the networks, e.g. cuda")
    parser.add_argument("--cache-mb", type=float, default=CACHE_MB, help="memory for cached probabilities")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        tune_and_save(
            args.classifier,
            args.segmenter,
            args.data,
            args.out,
            args.name,
            description=args.description,
            cache_mb=args.cache_mb,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device=args.device,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"steel tune: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    return exit_codes.OK
