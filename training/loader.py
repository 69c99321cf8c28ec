"""Batches for training and validation: epoch order, per-sample seeded augmentation, padding collate.

Randomness is keyed, not streamed: epoch e draws its order from (seed, e) and sample position p
of that epoch draws its crop and augmentation from (seed, e, p). A run therefore gives the same
batches whatever the number of DataLoader workers, and a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from training.augment import Augmenter, balanced_weights, random_crop
from training.datasets import SteelDataset
from training.mixed_data import MixedDataset

# Share of training crops placed on a defect pixel (when the frame has one).
DEFECT_CROP_P = 0.5


def epoch_order(
    num_images: int, seed: int, epoch: int, weights: np.ndarray | None = None, draws: int | None = None
) -> np.ndarray:
    """Image indices for one epoch: a permutation, or ``draws`` (default num_images) weighted draws
    with replacement."""
    rng = np.random.default_rng([seed, epoch])
    if weights is None:
        return rng.permutation(num_images)
    return rng.choice(num_images, size=draws or num_images, replace=True, p=weights)


class TrainingSamples(torch.utils.data.Dataset):
    """Cropped, augmented samples in the order set by ``set_epoch``.

    Returns (image uint8 [h, w], target): target is masks uint8 [C, h, w] for the segmenter and
    class presence uint8 [C] in the crop for the classifier (so workers ship no masks then).
    """

    def __init__(
        self,
        dataset: SteelDataset,
        task: str,
        crop: tuple[int, int] | None,
        seed: int,
        balanced: bool = False,
        augmenter: Augmenter | None = None,
        defect_crop_p: float = DEFECT_CROP_P,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError(f"the {dataset.split} split of {dataset.root} has no images")
        self.dataset = dataset
        self.task = task
        self.crop = crop
        self.seed = seed
        self.augmenter = augmenter or Augmenter()
        self.defect_crop_p = defect_crop_p
        self.draws: int | None = None
        if isinstance(dataset, MixedDataset):
            self.weights, self.draws = dataset.sampling_weights(balanced)
        else:
            self.weights = balanced_weights(dataset.class_presence()) if balanced else None
        self.epoch = 0
        self.order = epoch_order(len(dataset), seed, 0, self.weights, self.draws)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = epoch_order(len(self.dataset), self.seed, epoch, self.weights, self.draws)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        image, masks, _ = self.dataset[int(self.order[position])]
        rng = np.random.default_rng([self.seed, self.epoch, position])
        if self.crop is not None:
            image, masks = random_crop(image, masks, self.crop, rng, self.defect_crop_p)
        image, masks = self.augmenter(image, masks, rng)
        if self.task == "classifier":
            return np.ascontiguousarray(image), masks.any(axis=(1, 2)).astype(np.uint8)
        return np.ascontiguousarray(image), np.ascontiguousarray(masks)


class FullFrames(torch.utils.data.Dataset):
    """Whole frames and masks, unaugmented, for validation."""

    def __init__(self, dataset: SteelDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, masks, _ = self.dataset[index]
        return image, masks


def collate(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images uint8 [B, H, W], targets uint8, sizes int64 [B, 2]).

    Frames of different sizes are padded to the largest (image edge replicated, masks 0); sizes
    gives each frame's own (h, w) so validation can score only the real pixels.
    """
    sizes = np.array([s[0].shape for s in samples], dtype=np.int64)
    height, width = (int(v) for v in sizes.max(axis=0))
    images, targets = [], []
    for image, target in samples:
        pad_h, pad_w = height - image.shape[0], width - image.shape[1]
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w)), mode="edge")
            if target.ndim == 3:
                target = np.pad(target, ((0, 0), (0, pad_h), (0, pad_w)))
        images.append(image)
        targets.append(target)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)), torch.from_numpy(sizes)
