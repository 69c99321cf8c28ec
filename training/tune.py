"""`steel tune`: pick per-class post-processing on the validation split and write a model bundle.

The search is training.postprocess_search over the cache of training.probability_cache; the bundle's
provenance records the grid and the raw and tuned validation Dice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steelcore import exit_codes
from training.cli_options import add_network_run_options
from training.postprocess_search import (
    GATE_THRESHOLDS,
    MIN_AREA_FRACTIONS,
    PIXEL_THRESHOLDS,
    ClassChoice,
    cached_mean_dice,
    search,
)
from training.probability_cache import BATCH_SIZE, CACHE_MB, collect_probabilities

log = logging.getLogger(__name__)


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


def build_run_model(run: TrainingRun) -> Any:
    from training.networks import build_model

    model = build_model(run.task, run.net)  # type: ignore[arg-type]
    try:
        model.load_state_dict(run.state)
    except RuntimeError as exc:
        raise ValueError(f"{run.path / 'model.pt'} does not match {run.path / 'config.json'}: {exc}") from exc
    return model.eval()


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
        classifier=build_run_model(cls_run).to(device) if cls_run else None,
        segmenter=build_run_model(seg_run).to(device),
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
    add_network_run_options(parser, BATCH_SIZE)
    parser.add_argument("--cache-mb", type=float, default=CACHE_MB, help="memory for cached probabilities")


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
