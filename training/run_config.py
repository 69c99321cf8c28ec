"""Hyperparameters of a training run, their defaults, and how --resume reads them back."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steelcore.severstal import FRAME_HEIGHT

log = logging.getLogger(__name__)

TASKS = ("classifier", "segmenter")
# Segmenter crops: full frame height, a third of a 1600-wide Severstal frame.
DEFAULT_SEGMENTER_CROP: tuple[int, int] = (FRAME_HEIGHT, 512)
CONFIG_FILE, CHECKPOINT_FILE, MODEL_FILE = "config.json", "checkpoint.pt", "model.pt"
METRICS_FILE, CURVES_FILE = "metrics.json", "curves.png"
# Hyperparameters that a resumed run may change without breaking exact continuation.
RUNTIME_KEYS = ("device", "threads", "workers")
CUDA_WORKERS = 8
AUGMENT_PRESETS = ("camera", "basic")


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (the defaults are the product's defaults)."""

    task: str
    # Dataset folders, each optionally "DIR:FACTOR" (training.mixed_data); a single str is one folder.
    data: list[str] | str
    preset: str = "small"
    epochs: int = 12
    batch_size: int = 8
    # (height, width) of training crops; None trains on whole frames. Frames smaller than the crop stay whole.
    crop: tuple[int, int] | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    balanced: bool = False
    # "camera": flips, shifts and every photometric change a line camera makes (gain/offset +-25 gray
    # levels, contrast, gamma, JPEG 60-95, blur, noise); "basic": flips, shifts, mild brightness/contrast.
    augment: str = "camera"
    # Weights to start from: a run folder of the same task, or a model bundle (name or folder).
    init: str | None = None
    # "best": keep the epoch with the best validation score; "last": keep the last epoch (cross-validation
    # folds, where choosing an epoch on the held-out frames would leak them into the choice).
    keep: str = "best"
    defect_crop_p: float = 0.5
    dice_weight: float = 1.0
    max_images: int | None = None
    max_val_images: int | None = None
    val_batch_size: int = 4
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    # None: 0 on CPU (a worker process competes with the model's OpenMP threads on 2 cores and measured
    # slower; decoding + augmenting a crop costs ~4 ms against ~30+ ms of training); CUDA_WORKERS on CUDA.
    workers: int | None = None
    net: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's network config

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}; got {self.task!r}")
        self.data = [self.data] if isinstance(self.data, str | Path) else [str(d) for d in self.data]
        if not self.data:
            raise ValueError("no training data given (--data DIR)")
        if self.augment not in AUGMENT_PRESETS:
            raise ValueError(f"augment must be one of {AUGMENT_PRESETS}; got {self.augment!r}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be best or last; got {self.keep!r}")
        if self.crop is not None:
            self.crop = (int(self.crop[0]), int(self.crop[1]))
            if min(self.crop) < 32:
                raise ValueError(f"crop must be at least 32x32; got {self.crop[0]}x{self.crop[1]}")
        for name in ("epochs", "batch_size", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("lr must be > 0, weight_decay and warmup_epochs >= 0")
        for name in ("max_images", "max_val_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda; got {self.device!r}")


def parse_crop(text: str) -> tuple[int, int] | None:
    """'256x512' -> (256, 512); 'full' -> None (whole frames)."""
    if text.strip().lower() == "full":
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"crop must be HxW (e.g. 256x512) or 'full'; got {text!r}")
    return int(parts[0]), int(parts[1])


def default_crop(task: str) -> tuple[int, int] | None:
    """Segmenter: 256x512 crops. Classifier: whole frames, since it decides presence per frame."""
    return DEFAULT_SEGMENTER_CROP if task == "segmenter" else None


def prepare_run(out: Path, cfg: TrainConfig, resume: bool) -> TrainConfig:
    """Check the run folder; on --resume, the saved hyperparameters win (except epochs and runtime keys)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    has_checkpoint = (out / CHECKPOINT_FILE).is_file()
    if has_checkpoint and not resume:
        raise ValueError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    if not (resume and has_checkpoint):
        return cfg
    saved = json.loads((out / CONFIG_FILE).read_text())
    saved_data = saved["data"] if isinstance(saved["data"], list) else [saved["data"]]
    if saved_data != resolved_specs(cfg.data):
        log.warning("resuming on the run's own data %s, not %s", saved_data, cfg.data)
    if saved.get("task") != cfg.task:
        raise ValueError(f"{out} holds a {saved.get('task')} run, not a {cfg.task} run")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    kept = {k: v for k, v in saved.get("hyperparameters", {}).items() if k in known}
    kept.update({k: getattr(cfg, k) for k in (*RUNTIME_KEYS, "epochs")})
    kept["crop"] = tuple(kept["crop"]) if kept.get("crop") else None
    return TrainConfig(
        task=cfg.task, data=saved_data, **{k: v for k, v in kept.items() if k not in ("task", "data")}
    )


def resolved_specs(data: list[str]) -> list[str]:
    """The data specs with absolute folders, as config.json records them."""
    from training.mixed_data import DataSpec, parse_specs

    return [str(DataSpec(str(Path(s.path).resolve()), s.factor)) for s in parse_specs(data)]
