"""Train one network into a run folder (`steel train classifier|segmenter`).

A run folder holds everything a run produces:

    RUN/config.json      task, network config, class ids/names, data path, hyperparameters, seed
    RUN/checkpoint.pt    last finished epoch (model, optimizer, scheduler, scaler, RNG, history): --resume
    RUN/model.pt         state_dict of the best epoch (by val mean Dice, or val mean AUC for the classifier)
    RUN/metrics.json     per-epoch train/val loss, validation scores, seconds and samples/s
    RUN/curves.png       the same as plots
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.json_files import write_json
from training.run_config import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CUDA_WORKERS,
    CURVES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TrainConfig,
    prepare_run,
    resolved_specs,
)
from training.train_session import new_session, resolve_device, save_torch, train_epoch
from training.validation import epoch_score, validate

log = logging.getLogger(__name__)


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
    device = resolve_device(cfg.device)
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
        session = new_session(cfg, net_config, len(train_loader), device, init_state)
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
            row = train_epoch(session, cfg, train_loader, device, progress)
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
                save_torch(session.model.state_dict(), out / MODEL_FILE)
            save_torch(session.state(), out / CHECKPOINT_FILE)
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
