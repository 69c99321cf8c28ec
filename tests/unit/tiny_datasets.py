"""Tiny on-disk datasets in both layouts, with masks known to the test (shared by the training tests)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from steelcore.rle import encode

BACKGROUND = 90
DEFECT_GREY = 220
# Networks small enough for a 1-second epoch on one thread.
TINY_NET = {
    "widths": [4, 4, 8, 8, 8],
    "blocks": [1, 1, 1, 1],
    "decoder_widths": [8, 8, 4, 4],
    "input_scale": 1.0,
}
TINY_CLS = {k: v for k, v in TINY_NET.items() if k != "decoder_widths"}


def _blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    mask = np.zeros(shape, dtype=np.uint8)
    bh, bw = int(rng.integers(6, h // 2)), int(rng.integers(8, w // 3))
    y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
    mask[y : y + bh, x : x + bw] = 1
    return mask


def make_kaggle(
    root: Path, names: list[str], shape: tuple[int, int] = (64, 160), seed: int = 0
) -> dict[str, np.ndarray]:
    """Kaggle layout under root; image k holds class (k % 4) + 1, every 5th image also class 4, the
    last image none. Returns image id -> masks (4, H, W) as written."""
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for k, name in enumerate(names):
        masks = np.zeros((4, *shape), dtype=np.uint8)
        if k != len(names) - 1:
            masks[k % 4] = _blob(shape, rng)
            if k % 5 == 0:
                masks[3] = _blob(shape, rng) & (1 - masks[k % 4])
        image = np.full(shape, BACKGROUND, dtype=np.uint8)
        image[masks.any(axis=0)] = DEFECT_GREY
        cv2.imwrite(str(root / "train_images" / name), image)
        truth[name] = masks
        rows += [f"{name},{c + 1},{encode(masks[c])}" for c in range(4) if masks[c].any()]
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n" + "\n".join(rows) + "\n")
    return truth


def make_pairs(
    root: Path, train: list[str], val: list[str], shape: tuple[int, int] = (48, 48), seed: int = 0
) -> dict[str, np.ndarray]:
    """NEU-Seg layout under root (labels 1 inclusion, 2 patches, 3 scratches). Returns id -> label map."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("0 background\n1 inclusion\n2 patches\n3 scratches\n")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "val.txt").write_text("\n".join(val) + "\n")
    rng = np.random.default_rng(seed)
    labels = {}
    for k, name in enumerate(train + val):
        label = np.zeros(shape, dtype=np.uint8)
        label[_blob(shape, rng) == 1] = k % 3 + 1
        if k % 2:
            label[_blob(shape, rng) == 1] = (k + 1) % 3 + 1
        image = np.full(shape, BACKGROUND, dtype=np.uint8)
        image[label > 0] = DEFECT_GREY
        # NEU stores grey frames as three equal channels.
        cv2.imwrite(str(root / "images" / f"{name}.png"), cv2.merge([image, image, image]))
        cv2.imwrite(str(root / "masks" / f"{name}.png"), label)
        labels[name] = label
    return labels
