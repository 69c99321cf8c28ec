"""The camera changes a shipped model must survive, applied to evaluation frames.

A lamp that ages or a gain that drifts shifts every gray level; a copy or a camera setting re-encodes
the JPEG. `steel eval --robustness` and the cross-validation report score the same frames under
each of these and report the loss in mean Dice against the unchanged frames.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.augment import camera_response, jpeg_roundtrip
from training.datasets import Sample, SteelDataset

Perturbation = Callable[[np.ndarray], np.ndarray]

PERTURBATIONS: dict[str, Perturbation] = {
    "brighter_20": lambda image: camera_response(image, 1.0, 20.0, 1.0),
    "darker_20": lambda image: camera_response(image, 1.0, -20.0, 1.0),
    "jpeg_70": lambda image: jpeg_roundtrip(image, 70),
}
# The most mean Dice the shipped model may lose under any one perturbation (issue target).
MAX_DICE_LOSS = 0.02


class PerturbedDataset(SteelDataset):
    """A dataset whose frames pass through one perturbation; masks and ids unchanged."""

    def __init__(self, dataset: SteelDataset, perturb: Perturbation) -> None:
        self.__dict__.update(dataset.__dict__)
        self._source = dataset
        self._perturb = perturb

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Sample:
        image, masks, image_id = self._source[index]
        return self._perturb(image), masks, image_id


def robustness_summary(base_dice: float, perturbed_dice: dict[str, float]) -> dict[str, object]:
    """Per perturbation: mean Dice, its change against the unchanged frames and whether it holds."""
    rows = {
        name: {
            "mean_dice": dice,
            "delta": dice - base_dice,
            "within_target": base_dice - dice <= MAX_DICE_LOSS,
        }
        for name, dice in perturbed_dice.items()
    }
    return {"base_mean_dice": base_dice, "max_loss_target": MAX_DICE_LOSS, "perturbations": rows}
