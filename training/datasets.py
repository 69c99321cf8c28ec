"""Labelled steel-surface datasets on disk, read one sample at a time.

Two layouts are understood, told apart by what the folder holds:

- Kaggle "Severstal" layout (the real competition data and `steel synth` output):
  ``DIR/train_images/*.jpg`` (``DIR/images`` is accepted too) plus ``DIR/train.csv`` with
  ``ImageId,ClassId,EncodedPixels`` rows. An image without a row is defect-free. Classes 1..4.
  The validation split is the 10% of images whose ImageId hashes into it (stable across runs,
  machines and dataset sizes, so adding images never moves an old one between splits).
- Image/mask pairs (NEU-Seg): ``DIR/images/ID.jpg``, ``DIR/masks/ID.png`` holding one label per
  pixel (0 = background), ``DIR/classes.txt`` ("0 background", "1 inclusion", ...) and the
  ``train.txt`` / ``val.txt`` id lists that give the split.

A sample is ``(image uint8 (H, W), masks uint8 (C, H, W), image_id)``. Frames are read as
grayscale (the JPEGs are stored with three equal channels). Masks are decoded per sample and
never held for the whole dataset: the real Kaggle set has 12,568 frames.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from steelcore.kaggle_csv import IMAGE_DIRS, LABELS_FILE
from steelcore.severstal import CLASS_IDS, CLASS_NAMES

log = logging.getLogger(__name__)

Split = Literal["train", "val", "all"]
SPLITS: tuple[str, ...] = ("train", "val", "all")
Sample = tuple[np.ndarray, np.ndarray, str]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VAL_FRACTION = 0.1
# Hash buckets for the split: fine enough that VAL_FRACTION is honoured to 0.01%.
_HASH_BUCKETS = 10_000


def in_val_split(image_id: str, val_fraction: float = VAL_FRACTION) -> bool:
    """Whether an image belongs to the validation split: a stable hash of its id, not Python's hash()."""
    digest = hashlib.sha1(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _HASH_BUCKETS < round(val_fraction * _HASH_BUCKETS)


def read_gray(path: Path) -> np.ndarray:
    """A frame as uint8 (H, W); ValueError if the file is missing or not a readable image."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot read image {path} (missing or not an image)")
    return image


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")


class SteelDataset:
    """Common part of both layouts: ids of one split, class ids/names, per-sample reads."""

    layout: str = ""

    def __init__(
        self,
        root: Path,
        split: str,
        image_ids: Sequence[str],
        class_ids: Sequence[int],
        class_names: dict[int, str],
    ) -> None:
        self.root = root
        self.split = split
        self.image_ids: list[str] = list(image_ids)
        self.class_ids: list[int] = [int(c) for c in class_ids]
        self.class_names: dict[int, str] = {int(c): class_names[c] for c in self.class_ids}
        self._presence: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        image = self.read_image(image_id)
        return image, self.read_masks(image_id, image.shape), image_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, images={len(self)})"

    def read_image(self, image_id: str) -> np.ndarray:
        raise NotImplementedError

    def read_masks(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def _presence_of(self, image_id: str) -> np.ndarray:
        raise NotImplementedError

    def class_presence(self) -> np.ndarray:
        """(N, C) bool: which classes each image of the split holds (cached; no masks are kept)."""
        if self._presence is None:
            presence = np.zeros((len(self), self.num_classes), dtype=bool)
            for i, image_id in enumerate(self.image_ids):
                presence[i] = self._presence_of(image_id)
            self._presence = presence
        return self._presence

    def subset(self, indices: Sequence[int]) -> SteelDataset:
        """The same dataset restricted to some of its images (in the given order)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.image_ids = [self.image_ids[i] for i in indices]
        clone._presence = None if self._presence is None else self._presence[list(indices)]
        return clone


class KaggleDataset(SteelDataset):
    """Severstal layout: train_images/ + train.csv (RLE per image and class)."""

    layout = "kaggle"

    def __init__(self, root: Path, split: str = "all", val_fraction: float = VAL_FRACTION) -> None:
        from steelcore.kaggle_csv import find_image_dir, read_labels

        _check_split(split)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
        image_dir = find_image_dir(root)
        if image_dir is None:
            raise ValueError(f"{root} has {LABELS_FILE} but no image folder ({' or '.join(IMAGE_DIRS)})")
        self.image_dir = image_dir
        self.labels: dict[str, list[str]] = read_labels(root / LABELS_FILE, num_classes=len(CLASS_IDS))
        on_disk = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not on_disk:
            raise ValueError(f"no images in {image_dir}")
        missing = len(set(self.labels) - set(on_disk))
        if missing:
            # A partial download is common; the frames that are here are still correctly labelled.
            log.warning(
                "%s lists %d images that are not in %s; they are skipped", LABELS_FILE, missing, image_dir
            )
        if split == "all":
            ids = on_disk
        else:
            want_val = split == "val"
            ids = [i for i in on_disk if in_val_split(i, val_fraction) == want_val]
        super().__init__(root, split, ids, CLASS_IDS, CLASS_NAMES)

    def read_image(self, image_id: str) -> np.ndarray:
        return read_gray(self.image_dir / image_id)

    def read_masks(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        from steelcore.rle import decode_stack

        rles = self.labels.get(image_id)
        if rles is None or not any(rles):
            return np.zeros((self.num_classes, *shape), dtype=np.uint8)
        try:
            return decode_stack(rles, shape=shape)
        except ValueError as exc:
            raise ValueError(f"{LABELS_FILE}: bad mask for {image_id} at frame size {shape}: {exc}") from exc

    def _presence_of(self, image_id: str) -> np.ndarray:
        rles = self.labels.get(image_id) or [""] * self.num_classes
        return np.array([bool(r.strip()) for r in rles], dtype=bool)


def _read_class_names(path: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected 'ID name', got {line!r}")
        names[int(parts[0])] = parts[1].strip()
    names.pop(0, None)  # label 0 is the background, not a class the network predicts
    if not names:
        raise ValueError(f"{path} names no class besides background")
    return names


def _read_id_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class PairDataset(SteelDataset):
    """Image/mask pairs (NEU-Seg): images/ID.*, masks/ID.png with labels 0..K, classes.txt, train/val.txt."""

    layout = "pairs"

    def __init__(self, root: Path, split: str = "all", val_fraction: float = VAL_FRACTION) -> None:
        _check_split(split)
        image_dir, mask_dir = root / "images", root / "masks"
        if not image_dir.is_dir():
            raise ValueError(f"{root} has masks/ but no images/ folder")
        self.image_paths = {
            p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
        }
        self.mask_dir = mask_dir
        if (root / "classes.txt").is_file():
            class_names = _read_class_names(root / "classes.txt")
        else:
            raise ValueError(f"{root}/classes.txt is missing: it names the mask labels ('1 inclusion', ...)")
        lists = {s: root / f"{s}.txt" for s in ("train", "val")}
        if all(p.is_file() for p in lists.values()):
            by_split = {s: _read_id_list(p) for s, p in lists.items()}
        else:
            log.warning("%s has no train.txt/val.txt; splitting by a hash of the image id", root)
            ids = sorted(self.image_paths)
            by_split = {
                "train": [i for i in ids if not in_val_split(i, val_fraction)],
                "val": [i for i in ids if in_val_split(i, val_fraction)],
            }
        ids = by_split["train"] + by_split["val"] if split == "all" else by_split[split]
        absent = [i for i in ids if i not in self.image_paths]
        if absent:
            raise ValueError(
                f"{len(absent)} ids of the {split} list have no image in {image_dir}, e.g. {absent[0]}"
            )
        super().__init__(root, split, ids, sorted(class_names), class_names)

    def read_image(self, image_id: str) -> np.ndarray:
        return read_gray(self.image_paths[image_id])

    def _read_label_map(self, image_id: str) -> np.ndarray:
        path = self.mask_dir / f"{image_id}.png"
        labels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if labels is None:
            raise ValueError(f"cannot read mask {path} (missing or not an image)")
        top = int(labels.max())
        if top > max(self.class_ids):
            raise ValueError(f"mask {path} holds label {top}; classes.txt names only {self.class_ids}")
        return labels

    def read_masks(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        labels = self._read_label_map(image_id)
        if labels.shape != tuple(shape):
            raise ValueError(f"mask of {image_id} is {labels.shape}, its image is {tuple(shape)}")
        ids = np.asarray(self.class_ids, dtype=np.uint8)[:, None, None]
        return (labels[None] == ids).astype(np.uint8)

    def _presence_of(self, image_id: str) -> np.ndarray:
        present = np.bincount(self._read_label_map(image_id).ravel(), minlength=256)
        return present[self.class_ids] > 0


def open_dataset(path: str | Path, split: str = "all", val_fraction: float = VAL_FRACTION) -> SteelDataset:
    """Open a dataset folder in either layout and select a split ("train" | "val" | "all").

    Raises ValueError naming the problem when the folder is in neither layout or is malformed.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist")
    if (root / LABELS_FILE).is_file():
        return KaggleDataset(root, split, val_fraction)
    if (root / "masks").is_dir():
        return PairDataset(root, split, val_fraction)
    raise ValueError(
        f"{root} is not a dataset: expected train_images/ + {LABELS_FILE} (Kaggle layout) "
        "or images/ + masks/ + classes.txt (image/mask pairs)"
    )
