"""Check a training dataset completely before the first epoch: a bad file stops `steel train` at
once, naming the file and row, instead of hours later in the middle of an epoch (or never, when a
missing frame is silently skipped)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from training.datasets import KaggleDataset, PairDataset, SteelDataset

log = logging.getLogger(__name__)


def _csv_row(csv_path: Path, image_id: str) -> str:
    """'train.csv:LINE' of the first row naming image_id (for messages)."""
    with csv_path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if line.split(",", 1)[0].strip() == image_id or line.startswith(f"{image_id}_"):
                return f"{csv_path}:{number}"
    return str(csv_path)


def check_kaggle(dataset: KaggleDataset, progress: bool = False) -> None:
    """Every labelled image exists, every frame has the size of the first one, every RLE fits it."""
    from steelcore.kaggle_csv import LABELS_FILE, read_labels

    csv_path = Path(dataset.root) / LABELS_FILE
    on_disk = {p.name for p in dataset.image_dir.iterdir()}
    for image_id in sorted(dataset.labels):
        if image_id not in on_disk:
            raise ValueError(
                f"{_csv_row(csv_path, image_id)}: image {image_id} is not in {dataset.image_dir}"
            )
    shapes = {
        image_id: dataset.read_image(image_id).shape
        for image_id in tqdm(
            dataset.image_ids, desc=f"check {dataset.root}", unit="frame", disable=not progress
        )
    }
    if not shapes:
        return
    # The size most frames have is the dataset's; the odd ones out are named.
    sizes = Counter(shapes.values())
    shape = sizes.most_common(1)[0][0]
    for image_id, other in shapes.items():
        if other != shape:
            raise ValueError(
                f"{dataset.image_dir / image_id} is {other[1]}x{other[0]}; the other frames of "
                f"{dataset.root} are {shape[1]}x{shape[0]}"
            )
    read_labels(csv_path, num_classes=dataset.num_classes, validate_shape=shape)


def check_pairs(dataset: PairDataset, progress: bool = False) -> None:
    """Every image and mask is readable, of one size, with labels classes.txt names."""
    for image_id in tqdm(dataset.image_ids, desc=f"check {dataset.root}", unit="frame", disable=not progress):
        image = dataset.read_image(image_id)
        dataset.read_masks(image_id, image.shape)


def check_dataset(dataset: SteelDataset, progress: bool = False) -> None:
    """Raise ValueError naming the first bad file or row of dataset (any part of a mixed one)."""
    for part in getattr(dataset, "parts", [dataset]):
        if isinstance(part, KaggleDataset):
            check_kaggle(part, progress)
        elif isinstance(part, PairDataset):
            check_pairs(part, progress)
        else:
            log.debug("no file check for %r", part)
