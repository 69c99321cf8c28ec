"""One training session's state (model, optimizer, schedule, AMP scaler, history) and one epoch over it.

The checkpoint written from TrainSession.state() holds the RNG states too, so that --resume
continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.run_config import TrainConfig
from training.validation import forward_loss

# Fraction of the peak learning rate the cosine schedule ends at.
MIN_LR_FRACTION = 0.01


def save_torch(obj: Any, path: Path) -> None:
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


def resolve_device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but this torch build sees no CUDA device")
    return torch.device(name)


@dataclass
class TrainSession:
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


def new_session(
    cfg: TrainConfig,
    net_config: dict[str, Any],
    steps_per_epoch: int,
    device: Any,
    init_state: dict[str, Any] | None = None,
) -> TrainSession:
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
    return TrainSession(model, optimizer, scheduler, scaler)


def train_epoch(session: TrainSession, cfg: TrainConfig, loader: Any, device: Any, progress: bool) -> dict:
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
