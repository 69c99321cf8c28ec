"""Run a model bundle on grayscale frames: probabilities out, post-processing left to the caller.

Frames may have any size (Severstal 256x1600, NEU 200x200); the networks pad internally. Batches
are formed from consecutive frames of the same size, so a folder of mixed sizes still works.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import cv2
import numpy as np

from steelcore.postprocess import PROBABILITY_CODES, probabilities

if TYPE_CHECKING:
    from training.model_bundle import ModelBundle

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
T = TypeVar("T")


def _model_device(module: object) -> object:
    params = list(module.parameters())  # type: ignore[attr-defined]
    return params[0].device if params else "cpu"


def predict_probs(bundle: ModelBundle, frames: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(cls_probs float32 [B, C] or None, seg_probs float32 [B, C, H, W]) for frames uint8 [B, H, W].

    Sigmoid outputs: the classes are independent labels (a frame may hold several defects). The
    segmenter's are rounded to the uint8 codes Triton's segmenter answers (code / 255, see
    ``steelcore.postprocess``), so evaluation, tuning and `steel predict` see what serving sees and
    their masks equal the served ones exactly.
    """
    import torch

    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be uint8 [B, H, W]; got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8; got {frames.dtype}")
    if getattr(bundle, "runtime", None) is not None:  # training.openvino_bundle.attach_runtime
        cls, seg = bundle.runtime(frames)
        _check_seg_shape(bundle, frames, seg)
        return cls, seg
    device = _model_device(bundle.segmenter)
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
        x = x.unsqueeze(1).float().div_(255.0)
        seg = probabilities(bundle.segmenter.probabilities(x, PROBABILITY_CODES).cpu().numpy())
        cls = None
        if bundle.classifier is not None:
            cls = torch.sigmoid(bundle.classifier(x)).float().cpu().numpy()
    _check_seg_shape(bundle, frames, seg)
    return cls, seg


def _check_seg_shape(bundle: ModelBundle, frames: np.ndarray, seg: np.ndarray) -> None:
    num_classes = len(bundle.class_ids)
    if seg.shape != (frames.shape[0], num_classes, *frames.shape[1:]):
        raise ValueError(
            f"segmenter returned shape {seg.shape} for frames {frames.shape} and {num_classes} classes"
        )


def list_images(folder: Path) -> list[Path]:
    """The JPEG/PNG files directly in folder, sorted by name; ValueError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no .jpg/.jpeg/.png images in {folder}")
    return paths


def read_frame(path: Path) -> np.ndarray:
    """A grayscale uint8 [H, W] frame from a JPEG/PNG file; ValueError naming the file if unreadable."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image {path} (not a readable JPEG/PNG)")
    return image


def batches_by_shape(
    items: Iterable[tuple[T, np.ndarray]], batch_size: int
) -> Iterator[tuple[list[T], np.ndarray]]:
    """Group consecutive (key, frame) pairs into (keys, stacked frames) of one size, batch_size at most."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    keys: list[T] = []
    frames: list[np.ndarray] = []
    for key, frame in items:
        if frames and (frame.shape != frames[0].shape or len(frames) == batch_size):
            yield keys, np.stack(frames)
            keys, frames = [], []
        keys.append(key)
        frames.append(frame)
    if frames:
        yield keys, np.stack(frames)


def predict_folder(
    bundle: ModelBundle,
    paths: Iterable[Path],
    batch_size: int = 8,
    unreadable: list[tuple[Path, str]] | None = None,
) -> Iterator[tuple[list[Path], np.ndarray | None, np.ndarray]]:
    """(paths, cls_probs, seg_probs) batch by batch for image files.

    An unreadable file raises ValueError naming it, unless ``unreadable`` is given: it is then
    appended there as (path, reason) and skipped, so a caller can name every bad file at once.
    """
    pairs = _readable_frames(paths, unreadable)
    for keys, frames in batches_by_shape(pairs, batch_size):
        cls, seg = predict_probs(bundle, frames)
        yield keys, cls, seg


def _readable_frames(
    paths: Iterable[Path], unreadable: list[tuple[Path, str]] | None
) -> Iterator[tuple[Path, np.ndarray]]:
    for path in paths:
        try:
            frame = read_frame(path)
        except ValueError as exc:
            if unreadable is None:
                raise
            unreadable.append((path, str(exc)))
            continue
        yield path, frame
