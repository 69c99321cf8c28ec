"""`steel train classifier|segmenter|all`: train the defect classifier and the ResUNet segmenter.

`steel train all --data DIR --out BUNDLE` trains both networks under BUNDLE/runs/, then tunes the
post-processing on the validation split and evaluates the resulting bundle: the one command a user
with the real Kaggle data runs. One network's run folder is written by training.trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from steelcore import exit_codes
from training.run_config import (
    AUGMENT_PRESETS,
    CUDA_WORKERS,
    DEFAULT_SEGMENTER_CROP,
    METRICS_FILE,
    TASKS,
    TrainConfig,
    default_crop,
    parse_crop,
)
from training.trainer import run_is_complete, train_run

log = logging.getLogger(__name__)

EVAL_PLOT_FILE = "metrics.png"  # `steel train all`: the bundle's per-class evaluation plot


def _default(name: str) -> Any:
    """TrainConfig's default for a field, shown in --help (the dataclass is the one place defaults live)."""
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "task",
        choices=[*TASKS, "all"],
        help="network to train; 'all' trains both, tunes post-processing and evaluates the bundle",
    )
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        help="dataset folder: Kaggle layout (train_images/ + train.csv) or images/ + masks/ pairs; "
        "repeat to train on several, each optionally DIR:FACTOR (each image drawn FACTOR times per epoch "
        "on average, e.g. --data synth:0.1 --data real:6)",
    )
    parser.add_argument(
        "--cv",
        help="all: cross-validate on this --data folder (few real frames): train per fold, report "
        "out-of-fold scores with nested tuning, tune on all folds, then train on everything",
    )
    parser.add_argument("--folds", type=int, default=5, help="--cv: number of folds (default 5)")
    parser.add_argument(
        "--cv-only",
        action="store_true",
        help="--cv: write the cross-validated report to --out/metrics.json and stop (no final training)",
    )
    parser.add_argument(
        "--synthetic-on-real",
        type=float,
        default=0.0,
        metavar="DRAWS",
        help="--cv: also train on synthetic defects painted onto the real training frames (real texture, "
        "more rare-class examples), DRAWS per real frame and epoch (default 0: off)",
    )
    parser.add_argument(
        "--real-paste",
        type=float,
        default=0.0,
        metavar="DRAWS",
        help="--cv: also train on the real training frames with real defects cut from the other training "
        "frames pasted in (real texture and real defects), DRAWS per real frame and epoch (default 0: off)",
    )
    parser.add_argument(
        "--pseudo-label",
        metavar="DIR[:FACTOR]",
        help="--cv with --teacher: also train on the unlabelled frames in DIR, labelled by the teacher "
        "(fold k's by the teacher's fold-k pair, which never saw fold k), FACTOR draws each per epoch "
        "(default 1)",
    )
    parser.add_argument(
        "--teacher",
        metavar="BUNDLE",
        help="--pseudo-label: a `steel train all --cv` bundle over the same --cv frames, --folds and --seed",
    )
    parser.add_argument(
        "--init",
        help="start from these weights: a run folder of the same task or a model bundle (name or path)",
    )
    parser.add_argument(
        "--augment",
        choices=AUGMENT_PRESETS,
        help=f"camera: +-25 gray levels, contrast, gamma, JPEG 60-95, blur, noise, flips, shifts; basic: "
        f"flips, shifts, mild brightness/contrast (default {_default('augment')})",
    )
    parser.add_argument("--name", help="all: bundle name (default: the --out folder name)")
    parser.add_argument("--description", help="all: one-line description stored in model.json")
    parser.add_argument(
        "--out", required=True, type=Path, help="run folder (classifier/segmenter) or bundle folder (all)"
    )
    parser.add_argument(
        "--preset", help=f"network preset: small (CPU) or large (GPU) (default {_default('preset')})"
    )
    parser.add_argument("--epochs", type=int, help=f"default {_default('epochs')}")
    parser.add_argument("--batch-size", type=int, help=f"default {_default('batch_size')}")
    crop = "x".join(map(str, DEFAULT_SEGMENTER_CROP))
    parser.add_argument(
        "--crop",
        type=parse_crop,
        default=argparse.SUPPRESS,
        help=f"training crop HxW or 'full' (default: segmenter {crop}, classifier whole frames)",
    )
    parser.add_argument(
        "--classifier-crop",
        type=parse_crop,
        default=argparse.SUPPRESS,
        help="all: the classifier's crop (default whole frames)",
    )
    parser.add_argument(
        "--classifier-epochs", type=int, help="all: the classifier's epochs (default --epochs)"
    )
    parser.add_argument("--lr", type=float, help=f"peak AdamW learning rate (default {_default('lr')})")
    parser.add_argument(
        "--weight-decay", type=float, help=f"AdamW weight decay (default {_default('weight_decay')})"
    )
    parser.add_argument(
        "--warmup-epochs",
        type=float,
        help=f"linear warmup before the cosine decay (default {_default('warmup_epochs')})",
    )
    parser.add_argument(
        "--balanced", action="store_true", help="sample images so every class is seen equally often"
    )
    parser.add_argument("--max-images", type=int, help="use only the first N training images")
    parser.add_argument("--max-val-images", type=int, help="validate on only the first N validation images")
    parser.add_argument(
        "--seed",
        type=int,
        help=f"seed of initialisation, order and augmentation (default {_default('seed')})",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--workers", type=int, help=f"DataLoader processes (default 0 on CPU, {CUDA_WORKERS} on CUDA)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], help=f"default {_default('device')}")
    parser.add_argument("--no-classifier", action="store_true", help="all: segmenter only (e.g. NEU-Seg)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs per epoch only)")


_CONFIG_ARGS = (
    "preset",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "max_images",
    "max_val_images",
    "seed",
    "threads",
    "workers",
    "device",
    "init",
    "augment",
)


def config_from_args(args: argparse.Namespace, task: str) -> TrainConfig:
    """A TrainConfig from the command line: unset options keep TrainConfig's defaults."""
    given = {k: getattr(args, k) for k in _CONFIG_ARGS if getattr(args, k, None) is not None}
    given["balanced"] = bool(args.balanced)
    # --crop / --classifier-crop are absent from args unless given ("full" gives None: whole frames).
    crop_arg = "crop"
    if task == "classifier" and args.task == "all":
        crop_arg = "classifier_crop"
        if args.classifier_epochs is not None:
            given["epochs"] = args.classifier_epochs
    crop = getattr(args, crop_arg) if hasattr(args, crop_arg) else default_crop(task)
    return TrainConfig(task=task, data=[str(d) for d in args.data], crop=crop, **given)


def train_all(args: argparse.Namespace) -> Path:
    """Classifier, segmenter, tuned post-processing and evaluation into bundle folder args.out."""
    from training.evaluate import evaluate_bundle
    from training.tune import tune_and_save

    if args.cv:
        from training.train_cv import train_all_cv

        return train_all_cv(args)
    if getattr(args, "pseudo_label", None) or getattr(args, "teacher", None):
        raise ValueError("--pseudo-label and --teacher need --cv: the teacher's folds keep the labels honest")
    bundle = Path(args.out)
    runs = bundle / "runs"
    tasks = ["segmenter"] if args.no_classifier else ["classifier", "segmenter"]
    run_dirs: dict[str, Path] = {}
    for task in tasks:
        cfg = config_from_args(args, task)
        run_dirs[task] = runs / task
        if args.resume and run_is_complete(run_dirs[task], cfg.epochs):
            log.info("%s run %s is complete; not retraining", task, run_dirs[task])
            continue
        train_run(cfg, run_dirs[task], resume=args.resume, progress=not args.no_progress)
    device = args.device or "cpu"
    progress = not args.no_progress
    log.info("tuning post-processing on the validation split of %s", args.data)
    data = [str(d) for d in args.data]
    tune_and_save(
        run_dirs.get("classifier"),
        run_dirs["segmenter"],
        data,
        bundle,
        args.name,
        description=args.description,
        progress=progress,
        device=device,
    )
    log.info("evaluating %s on the validation split", bundle)
    evaluate_bundle(
        bundle,
        data,
        "val",
        bundle / METRICS_FILE,
        bundle / EVAL_PLOT_FILE,
        progress=progress,
        device=device,
    )
    from training.drift_reference import record_for_bundle

    record_for_bundle(bundle, data)
    return bundle


def run(args: argparse.Namespace) -> int:
    try:
        if args.task == "all":
            path = train_all(args)
            print(f"model bundle written to {path}")
        else:
            metrics = train_run(
                config_from_args(args, args.task), args.out, resume=args.resume, progress=not args.no_progress
            )
            print(
                f"{args.task} run written to {args.out}: best epoch {metrics['best_epoch']}, "
                f"{metrics['score_name']} {metrics['best_score']:.4f}"
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"steel train: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    return exit_codes.OK
