"""Forward pass with the task's loss, and the per-epoch validation scores on whole frames."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from training.run_config import TrainConfig


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def forward_loss(model: Any, cfg: TrainConfig, images: Any, targets: Any, amp: bool) -> tuple[Any, Any]:
    import torch

    from training.losses import classifier_loss, segmenter_loss

    x = images.unsqueeze(1).float().div_(255.0)
    with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=amp):
        logits = model(x)
    if cfg.task == "segmenter":
        return logits, segmenter_loss(logits, targets, cfg.dice_weight)
    return logits, classifier_loss(logits, targets)


def validate(model: Any, cfg: TrainConfig, loader: Any, class_ids: list[int], device: Any, amp: bool) -> dict:
    """Val loss plus mean Dice at 0.5 (segmenter) or AUC and F1 at 0.5 (classifier), on whole frames."""
    import torch

    from training.metrics import dice_scores, roc_auc, scores_from_counts

    model.eval()
    loss_sum, seen = 0.0, 0
    dice_sum = np.zeros(len(class_ids))
    probs, labels = [], []
    with torch.inference_mode():
        for images, masks, sizes in loader:
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            targets = masks if cfg.task == "segmenter" else masks.flatten(2).amax(2)
            logits, loss = forward_loss(model, cfg, images, targets.float(), amp)
            loss_sum += float(loss) * len(images)
            seen += len(images)
            if cfg.task == "segmenter":
                pred = (torch.sigmoid(logits.float()) > 0.5).cpu().numpy()
                truth = masks.cpu().numpy()
                for i, (h, w) in enumerate(sizes.tolist()):
                    dice_sum += dice_scores(pred[i : i + 1, :, :h, :w], truth[i : i + 1, :, :h, :w])[0]
            else:
                probs.append(torch.sigmoid(logits.float()).cpu().numpy())
                labels.append(targets.cpu().numpy() > 0)
    model.train()
    result: dict[str, Any] = {"val_images": seen, "val_loss": loss_sum / seen}
    ids = [str(c) for c in class_ids]
    if cfg.task == "segmenter":
        per_class = dice_sum / seen
        result["val_mean_dice"] = float(per_class.mean())
        result["val_dice_per_class"] = dict(zip(ids, per_class.tolist(), strict=True))
        return result
    p, t = np.concatenate(probs), np.concatenate(labels)
    aucs = np.array([roc_auc(labels=t[:, k], scores=p[:, k]) for k in range(t.shape[1])])
    hits = p >= 0.5
    f1 = scores_from_counts((hits & t).sum(0), (hits & ~t).sum(0), (~hits & t).sum(0))["f1"]
    result["val_mean_auc"] = _finite(float(np.nanmean(aucs))) if np.isfinite(aucs).any() else None
    result["val_auc_per_class"] = {c: _finite(v) for c, v in zip(ids, aucs.tolist(), strict=True)}
    # A class with no positives and no predictions has no F1; it is left out of the mean.
    result["val_mean_f1"] = _finite(float(np.nanmean(f1))) if np.isfinite(f1).any() else None
    result["val_f1_per_class"] = {c: _finite(v) for c, v in zip(ids, f1.tolist(), strict=True)}
    return result


def epoch_score(task: str, row: dict) -> tuple[str, float]:
    """The number that picks the best epoch (higher is better)."""
    key = "val_mean_dice" if task == "segmenter" else "val_mean_auc"
    if row.get(key) is not None:
        return key, float(row[key])
    if row.get("val_loss") is not None:
        return "-val_loss", -float(row["val_loss"])
    return "-train_loss", -float(row["train_loss"])
