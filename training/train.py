"""`steel train classifier|segmenter|all`: train the defect classifier and the ResUNet segmenter.

A run directory holds everything a run produces:

    RUN/config.json      task, network config, class ids/names, data path, hyperparameters, seed
    RUN/checkpoint.pt    last finished epoch (model, optimizer, scheduler, scaler, RNG, history): --resume
    RUN/model.pt         state_dict of the best epoch (by val mean Dice, or val mean AUC for the classifier)
    RUN/metrics.json     per-epoch train/val loss, validation scores, seconds and samples/s
    RUN/curves.png       the same as plots

`steel train all --data DIR --out BUNDLE` trains both networks under BUNDLE/runs/, then tunes the
post-processing on the validation split and evaluates the resulting bundle: the one command a user
with the real Kaggle data runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steelcore import exit_codes
from training.json_files import write_json
from training.run_config import (
    AUGMENT_PRESETS,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CUDA_WORKERS,
    CURVES_FILE,
    DEFAULT_SEGMENTER_CROP,
    METRICS_FILE,
    MODEL_FILE,
    TASKS,
    TrainConfig,
    default_crop,
    parse_crop,
    prepare_run,
    resolved_specs,
)
from training.validation import epoch_score, forward_loss, validate

log = logging.getLogger(__name__)

EVAL_PLOT_FILE = "metrics.png"  # `steel train all`: the bundle's per-class evaluation plot
# Fraction of the peak learning rate the cosine schedule ends at.
MIN_LR_FRACTION = 0.01


def _save_torch(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to MIN_LR_FRACTION at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def _open_splits(cfg: TrainConfig, progress: bool = False) -> tuple[Any, Any]:
    from training.data_checks import check_dataset
    from training.mixed_data import open_mixed

    check_dataset(open_mixed(cfg.data, "all"), progress)
    train = open_mixed(cfg.data, "train")
    val = open_mixed(cfg.data, "val")
    # The first N of each split: Kaggle ids are hashes and NEU lists are shuffled, so this is a fair sample.
    if cfg.max_images is not None:
        train = train.subset(range(min(cfg.max_images, len(train))))
    if cfg.max_val_images is not None:
        val = val.subset(range(min(cfg.max_val_images, len(val))))
    if len(train) == 0:
        raise ValueError(f"the train split of {', '.join(cfg.data)} is empty")
    return train, val


def init_weights(source: str, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(network config, state dict) of ``task`` from a run folder or a model bundle (name or folder)."""
    import torch

    from training.model_bundle import resolve_bundle_path

    path = Path(source)
    if (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file():
        config = json.loads((path / CONFIG_FILE).read_text())
        if config.get("task") != task:
            raise ValueError(f"--init {source} is a {config.get('task')} run, not a {task} run")
        return config["net"], torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True)
    bundle = resolve_bundle_path(source)
    meta_path = bundle / "model.json"
    if not meta_path.is_file():
        raise ValueError(f"--init {source} is neither a training run folder nor a model bundle")
    meta = json.loads(meta_path.read_text())
    if not meta.get(task):
        raise ValueError(f"--init {source}: the bundle has no {task}")
    weights = bundle / f"{task}.pt"
    return meta[task]["config"], torch.load(weights, map_location="cpu", weights_only=True)


def _net_config(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    from training.networks import preset, resolve_config

    net = preset(cfg.preset, cfg.task)
    net.update(cfg.net)
    net["num_classes"] = num_classes
    return resolve_config(cfg.task, net)


def _loader(dataset: Any, batch_size: int, workers: int, device: Any) -> Any:
    import torch

    from training.loader import collate

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,  # the order is set per epoch by TrainingSamples.set_epoch
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def _resolve_device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but this torch build sees no CUDA device")
    return torch.device(name)


@dataclass
class _Session:
    """What one run trains with; the state a checkpoint saves and --resume restores."""

    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # epochs finished
    best_epoch: int = 0
    best_score: float = -math.inf

    def state(self) -> dict[str, Any]:
        import torch

        cuda = self.scaler.is_enabled()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
        }

    def restore(self, path: Path) -> None:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.scaler.is_enabled() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history, self.epoch = state["history"], state["epoch"]
        self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]


def _new_session(
    cfg: TrainConfig,
    net_config: dict[str, Any],
    steps_per_epoch: int,
    device: Any,
    init_state: dict[str, Any] | None = None,
) -> _Session:
    import torch

    from training.networks import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.task, net_config)
    if init_state is not None:
        try:
            model.load_state_dict(init_state)
        except RuntimeError as exc:
            raise ValueError(f"--init {cfg.init} does not fit the {cfg.task} network: {exc}") from exc
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = steps_per_epoch * cfg.epochs
    warmup = min(max(1, round(cfg.warmup_epochs * steps_per_epoch)), max(1, total // 4))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    return _Session(model, optimizer, scheduler, scaler)


def _train_epoch(session: _Session, cfg: TrainConfig, loader: Any, device: Any, progress: bool) -> dict:
    """One pass over the training batches; returns the epoch's train loss, seconds and samples/s."""
    import torch
    from tqdm import tqdm

    started = time.perf_counter()
    loss_sum, seen = 0.0, 0
    desc = f"{cfg.task} {session.epoch + 1}/{cfg.epochs}"
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)
    amp = session.scaler.is_enabled()
    for images, targets, _sizes in bar:
        images = images.to(device, non_blocking=True)
        _, loss = forward_loss(session.model, cfg, images, targets.to(device, non_blocking=True).float(), amp)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {float(loss)} in epoch {session.epoch + 1}; lower --lr")
        session.optimizer.zero_grad(set_to_none=True)
        session.scaler.scale(loss).backward()
        session.scaler.step(session.optimizer)
        session.scaler.update()
        session.scheduler.step()
        loss_sum += float(loss.detach()) * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    seconds = time.perf_counter() - started
    return {
        "epoch": session.epoch + 1,
        "train_loss": loss_sum / seen,
        "lr": session.optimizer.param_groups[0]["lr"],
        "train_seconds": seconds,
        "train_samples_per_s": seen / seconds,
    }


def _write_config(
    out: Path, cfg: TrainConfig, net_config: dict, train_set: Any, val_set: Any, workers: int
) -> None:
    import torch

    write_json(
        out / CONFIG_FILE,
        {
            "task": cfg.task,
            "net": net_config,
            "class_ids": train_set.class_ids,
            "class_names": {str(k): v for k, v in train_set.class_names.items()},
            "data": resolved_specs(cfg.data),
            "layout": sorted({part.layout for part in getattr(train_set, "parts", [train_set])}),
            "train_images": len(train_set),
            "val_images": len(val_set),
            "seed": cfg.seed,
            "hyperparameters": dataclasses.asdict(cfg)
            | {"crop": list(cfg.crop) if cfg.crop else None, "workers": workers},
            "torch": torch.__version__,
        },
    )


def train_run(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    datasets: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Train one network into run folder ``out``; returns the metrics written to metrics.json.

    on_epoch_end(epoch) is called after each epoch's checkpoint is on disk (used by tests to stop
    a run part-way, like a crash would). datasets=(train, val) replaces the splits of cfg.data
    (cross-validation folds); cfg.data is still recorded as the run's data.
    """
    import cv2
    import torch

    from training.augment import CAMERA_AUGMENT, Augmenter, AugmentParams
    from training.curves import plot_curves
    from training.loader import FullFrames, TrainingSamples

    out = Path(out)
    cfg = prepare_run(out, cfg, resume)
    device = _resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    workers = (
        cfg.workers
        if cfg.workers is not None
        else (0 if device.type == "cpu" else min(CUDA_WORKERS, os.cpu_count() or 1))
    )
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    # One cv2 thread, set before any loader worker is forked: the model owns the cores, and a forked
    # worker that reconfigures cv2's pool after the parent ran OpenMP kernels deadlocks.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = True
    try:
        train_set, val_set = datasets if datasets is not None else _open_splits(cfg, progress)
        class_ids = train_set.class_ids
        init_state = None
        if cfg.init:
            init_net, init_state = init_weights(cfg.init, cfg.task)
            net_config = {**init_net, **cfg.net, "num_classes": len(class_ids)}
        else:
            net_config = _net_config(cfg, len(class_ids))
        augmenter = Augmenter(CAMERA_AUGMENT if cfg.augment == "camera" else AugmentParams())
        samples = TrainingSamples(
            train_set,
            cfg.task,
            cfg.crop,
            cfg.seed,
            cfg.balanced,
            augmenter=augmenter,
            defect_crop_p=cfg.defect_crop_p,
        )
        train_loader = _loader(samples, cfg.batch_size, workers, device)
        val_loader = (
            _loader(FullFrames(val_set), cfg.val_batch_size, workers, device) if len(val_set) else None
        )
        session = _new_session(cfg, net_config, len(train_loader), device, init_state)
        if resume and (out / CHECKPOINT_FILE).is_file():
            session.restore(out / CHECKPOINT_FILE)
            log.info("resuming %s after epoch %d of %d", out, session.epoch, cfg.epochs)
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, cfg, net_config, train_set, val_set, workers)
        log.info(
            "%s: %d train / %d val images, classes %s, %d steps per epoch, device %s, %d loader workers",
            cfg.task,
            len(train_set),
            len(val_set),
            class_ids,
            len(train_loader),
            device,
            workers,
        )
        session.model.train()
        while session.epoch < cfg.epochs:
            samples.set_epoch(session.epoch)
            row = _train_epoch(session, cfg, train_loader, device, progress)
            if val_loader is not None:
                started = time.perf_counter()
                row |= validate(
                    session.model, cfg, val_loader, class_ids, device, session.scaler.is_enabled()
                )
                row["val_seconds"] = time.perf_counter() - started
            row["seconds"] = row["train_seconds"] + row.get("val_seconds", 0.0)
            score_name, score = epoch_score(cfg.task, row)
            session.history.append(row)
            session.epoch += 1
            if cfg.keep == "last" or score > session.best_score:
                session.best_epoch, session.best_score = session.epoch, score
                _save_torch(session.model.state_dict(), out / MODEL_FILE)
            _save_torch(session.state(), out / CHECKPOINT_FILE)
            metrics = {
                "task": cfg.task,
                "score_name": score_name,
                "best_epoch": session.best_epoch,
                "best_score": session.best_score,
                "epochs": session.history,
            }
            write_json(out / METRICS_FILE, metrics)
            plot_curves(metrics, out / CURVES_FILE)
            log.info("epoch %d/%d: %s", session.epoch, cfg.epochs, _summary(row))
            if on_epoch_end is not None:
                on_epoch_end(session.epoch)
        return json.loads((out / METRICS_FILE).read_text())
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        cv2.setNumThreads(cv2_threads)


def _summary(row: dict[str, Any]) -> str:
    keys = (
        "train_loss",
        "val_loss",
        "val_mean_dice",
        "val_mean_auc",
        "val_mean_f1",
        "train_samples_per_s",
        "seconds",
    )
    return ", ".join(f"{k} {row[k]:.4g}" for k in keys if row.get(k) is not None)


def run_is_complete(out: Path, epochs: int) -> bool:
    """Whether run folder ``out`` already finished ``epochs`` epochs (`steel train all --resume` skips it)."""
    path = out / METRICS_FILE
    if not path.is_file() or not (out / MODEL_FILE).is_file():
        return False
    return len(json.loads(path.read_text()).get("epochs", [])) >= epochs


# ---------------------------------------------------------------------------------------------- CLI


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
