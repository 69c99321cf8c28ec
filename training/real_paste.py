"""Real defects cut from one training frame and pasted onto another: `steel train --real-paste`.

The few real frames hold few defects (pitting 5, inclusion 2 of 65 frames); painted synthetic
defects (training.mixed_data.SyntheticOnReal) add examples on real texture but with synthetic looks.
Here both the texture and the defect are real: a connected component of a class mask is cut with
its pixels from a donor frame and pasted at another place along the strip of a training frame, its
brightness shifted to the target's surroundings and its edge feathered so the seam is not what the
network learns. Donors are only the frames of the dataset given, so cross-validation folds paste
only their own training frames' defects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from training.datasets import Sample, SteelDataset
from training.mixed_data import FrameVariants

# Rare classes first: each variant pastes a class with this probability when it has donors.
PASTE_FREQUENCIES = (0.5, 0.5, 0.3, 0.3)
MIN_DONOR_PX = 40
# A target place must be lit steel, not the black edge some frames show beside the strip.
MIN_TARGET_GRAY = 25
MAX_DARK_SHARE = 0.05
PLACEMENT_TRIES = 12


@dataclass(frozen=True, eq=False)
class Donor:
    """One connected defect region of one class in one frame: its bounding box and, inside it, the
    region's own pixels (another region of the same class may share the box)."""

    frame: int
    y0: int
    y1: int
    x0: int
    x1: int
    region: np.ndarray  # uint8 (y1 - y0, x1 - x0), 1 on the region


def find_donors(real: SteelDataset, min_px: int = MIN_DONOR_PX) -> list[list[Donor]]:
    """Per class channel, every connected mask region of at least min_px pixels in the dataset."""
    donors: list[list[Donor]] = [[] for _ in real.class_ids]
    presence = real.class_presence()
    for frame in range(len(real)):
        if not presence[frame].any():
            continue
        _image, masks, _id = real[frame]
        for channel in np.flatnonzero(presence[frame]):
            count, labels, stats, _ = cv2.connectedComponentsWithStats(masks[channel].astype(np.uint8), 8)
            for label in range(1, count):
                x, y, w, h, area = (int(v) for v in stats[label])
                if area >= min_px:
                    region = (labels[y : y + h, x : x + w] == label).astype(np.uint8)
                    donors[int(channel)].append(Donor(frame, y, y + h, x, x + w, region))
    return donors


def paste(
    target: np.ndarray,
    masks: np.ndarray,
    piece: np.ndarray,
    region: np.ndarray,
    channel: int,
    y0: int,
    x0: int,
) -> None:
    """Blend piece (its region's pixels) into target at (y0, x0) and mark masks[channel], in place."""
    h, w = region.shape
    window = target[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    inside = region.astype(bool)
    around = ~inside
    shift = 0.0
    if around.any():
        shift = float(window[around].mean()) - float(piece[around].mean())
    alpha = cv2.GaussianBlur(region.astype(np.float32), (5, 5), 1.0)
    alpha = np.maximum(alpha, region.astype(np.float32) * 0.85)
    blended = alpha * np.clip(piece.astype(np.float32) + shift, 0, 255) + (1 - alpha) * window
    target[y0 : y0 + h, x0 : x0 + w] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    masks[channel, y0 : y0 + h, x0 : x0 + w] |= inside.astype(masks.dtype)


class RealDefectPaste(FrameVariants):
    """Variants of real frames with real defects of the dataset's other frames pasted in."""

    layout = "real-paste"
    suffix = "paste"
    salt = (7,)

    def __init__(
        self,
        real: SteelDataset,
        copies: int = 4,
        seed: int = 0,
        frequencies: Sequence[float] = PASTE_FREQUENCIES,
    ) -> None:
        self.frequencies = tuple(float(f) for f in frequencies)
        self._donors: list[list[Donor]] | None = None
        super().__init__(real, copies, seed)

    @property
    def donors(self) -> list[list[Donor]]:
        if self._donors is None:
            self._donors = find_donors(self.real)
        return self._donors

    def added_channels(self, rng: np.random.Generator, frame: int) -> list[int]:
        draws = rng.random(len(self.frequencies))
        return [
            c
            for c, (u, f) in enumerate(zip(draws, self.frequencies, strict=True))
            if u < f and any(d.frame != frame for d in self.donors[c])
        ]

    def vary(self, image: np.ndarray, masks: np.ndarray, frame: int, rng: np.random.Generator) -> Sample:
        image, masks = image.copy(), masks.copy()
        for channel in self.added_channels(rng, frame):
            choices = [d for d in self.donors[channel] if d.frame != frame]
            donor = choices[int(rng.integers(len(choices)))]
            donor_image, _masks, _ = self.real[donor.frame]
            piece, region = donor_image[donor.y0 : donor.y1, donor.x0 : donor.x1], donor.region
            if rng.random() < 0.5:
                piece, region = piece[:, ::-1], region[:, ::-1]
            _place(image, masks, piece, region, channel, donor.y0, rng)
        return image, masks, ""


def _place(
    image: np.ndarray,
    masks: np.ndarray,
    piece: np.ndarray,
    region: np.ndarray,
    channel: int,
    y0: int,
    rng: np.random.Generator,
) -> None:
    """Paste at the first of a few random places along the strip that is lit and free of defects."""
    h, w = region.shape
    if w > image.shape[1] or y0 + h > image.shape[0]:
        return
    taken = masks.any(axis=0)
    for _ in range(PLACEMENT_TRIES):
        x0 = int(rng.integers(image.shape[1] - w + 1))
        window = np.s_[y0 : y0 + h, x0 : x0 + w]
        if taken[window].any() or float((image[window] < MIN_TARGET_GRAY).mean()) > MAX_DARK_SHARE:
            continue
        paste(image, masks, piece, region, channel, y0, x0)
        return
