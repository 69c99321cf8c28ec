"""Unlabelled real frames labelled by a teacher model: `steel train all --pseudo-label DIR --teacher BUNDLE`.

Cross-validation stays honest: fold k's frames are labelled by the teacher's own fold-k pair
(``TEACHER/runs/fold-k``, trained without fold k's labelled frames) with the post-processing the
teacher tuned for fold k without them (``metrics.json``, ``postprocess_per_fold``); the final fit's
by the teacher bundle itself. The teacher must be a `steel train all --cv` bundle over the same
frames and folds (same ``--folds`` and ``--seed``); ``check_teacher_folds`` refuses any other.

The labels are the teacher's post-processed masks, hard (no soft targets, no ignored pixels): a
frame the teacher clears trains as defect-free, which is what it adds most of (real clean texture).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets import SteelDataset, read_gray

log = logging.getLogger(__name__)

BATCH = 4  # frames per teacher forward pass: the teacher runs once per fold, memory stays small


class PseudoLabelled(SteelDataset):
    """Frames of one folder with masks a teacher drew, held as RLE in memory."""

    layout = "pseudo-labelled"

    def __init__(
        self,
        root: Path,
        labels: dict[str, list[str]],
        class_ids: Sequence[int],
        class_names: dict[int, str],
    ) -> None:
        self.labels = {image_id: list(rles) for image_id, rles in labels.items()}
        super().__init__(root, "train", sorted(self.labels), class_ids, class_names)

    def read_image(self, image_id: str) -> np.ndarray:
        return read_gray(self.root / image_id)

    def read_masks(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        from steelcore.rle import decode_stack

        return decode_stack(self.labels[image_id], shape=shape)

    def _presence_of(self, image_id: str) -> np.ndarray:
        return np.array([bool(r) for r in self.labels[image_id]], dtype=bool)


def label_frames(bundle: Any, images: Path, shape: tuple[int, int], progress: bool = False) -> PseudoLabelled:
    """Every JPEG/PNG frame directly in ``images`` with ``bundle``'s post-processed masks as labels.

    ValueError naming the file for a frame that cannot be read or is not ``shape`` (H, W), the
    labelled frames' size (the networks take any size, but a stray thumbnail is no strip frame)."""
    from steelcore.postprocess import apply_postprocess
    from steelcore.rle import encode_stack
    from training.inference import batches_by_shape, list_images, predict_probs, read_frame

    paths = list_images(images)

    def frames() -> Any:
        for path in paths:
            frame = read_frame(path)
            if frame.shape != tuple(shape):
                raise ValueError(
                    f"--pseudo-label {path}: a frame of {frame.shape[1]}x{frame.shape[0]}, "
                    f"not {shape[1]}x{shape[0]} as the labelled frames"
                )
            yield path.name, frame

    labels: dict[str, list[str]] = {}
    for names, batch in batches_by_shape(frames(), BATCH):
        cls, seg = predict_probs(bundle, batch)
        masks = apply_postprocess(cls, seg, bundle.postprocess)
        for name, stack in zip(names, masks, strict=True):
            labels[name] = encode_stack(stack)
        if progress:
            log.info("pseudo-labelled %d/%d frames of %s", len(labels), len(paths), images)
    dataset = PseudoLabelled(Path(images), labels, bundle.class_ids, bundle.class_names)
    presence = dataset.class_presence()
    log.info(
        "%s: %d frames pseudo-labelled, %d with a defect (per class %s)",
        images,
        len(dataset),
        int(presence.any(axis=1).sum()),
        presence.sum(axis=0).tolist(),
    )
    return dataset


def _teacher_report(teacher: Path) -> dict[str, Any]:
    path = Path(teacher) / "metrics.json"
    if not path.is_file():
        raise ValueError(
            f"--teacher {teacher}: no metrics.json; a teacher is a `steel train all --cv` bundle"
        )
    report = json.loads(path.read_text())
    if "fold_of_image" not in report.get("cross_validation", {}):
        raise ValueError(f"--teacher {teacher}: its metrics.json holds no cross-validation folds")
    return report


def check_teacher_folds(teacher: Path, image_ids: Sequence[str], assignment: np.ndarray) -> None:
    """ValueError unless the teacher cross-validated exactly these frames in exactly these folds:
    otherwise its fold-k pair may have trained on frames this run holds out in fold k."""
    theirs = _teacher_report(teacher)["cross_validation"]["fold_of_image"]
    ours = {image_id: int(fold) for image_id, fold in zip(image_ids, assignment, strict=True)}
    if {k: int(v) for k, v in theirs.items()} != ours:
        raise ValueError(
            f"--teacher {teacher} was cross-validated on other frames or folds than this run "
            "(use the same --cv data, --folds and --seed)"
        )


def fold_teacher(
    teacher: Path, fold: int, class_ids: list[int], class_names: dict[int, str], device: str
) -> Any:
    """The teacher's fold-``fold`` pair with the post-processing it tuned without that fold."""
    from training.model_bundle import PostprocessParams
    from training.train_cv import bundle_of

    runs = Path(teacher) / "runs" / f"fold-{fold}"
    run_dirs = {task: runs / task for task in ("classifier", "segmenter") if (runs / task).is_dir()}
    if "segmenter" not in run_dirs:
        raise ValueError(f"--teacher {teacher}: {runs / 'segmenter'} is missing")
    bundle = bundle_of(run_dirs, class_ids, class_names, device)
    per_fold = _teacher_report(teacher)["cross_validation"]["postprocess_per_fold"]
    bundle.postprocess = PostprocessParams.from_json(per_fold[fold])
    return bundle
