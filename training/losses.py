"""Training losses: BCE for defect presence, BCE + soft Dice for defect masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1.0


def classifier_loss(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per class: logits [B, C], present [B, C] in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits.float(), present.float())


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """1 - soft Dice per class over the whole batch, averaged over classes.

    Pooling a class over the batch (rather than per image) keeps the gradient informative when a
    crop holds a few defect pixels, and the smoothing term makes a class absent from both the
    batch and the prediction cost ~0 instead of dividing by zero.
    """
    probs = torch.sigmoid(logits.float())
    target = masks.float()
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (total + smooth)).mean()


def segmenter_loss(logits: torch.Tensor, masks: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Pixel-wise BCE + dice_weight * soft Dice: logits and masks [B, C, H, W]."""
    if logits.shape != masks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in shape")
    bce = F.binary_cross_entropy_with_logits(logits.float(), masks.float())
    return bce + dice_weight * soft_dice_loss(logits, masks)
