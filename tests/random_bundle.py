"""Model bundles with random "small"-preset weights, for the tests that export, serve or run a bundle
without waiting for a training run (the shipped model is trained separately), and synthetic frames
to run them on.

The weights depend only on ``seed``: the classifier is built first (when there is one), then the
segmenter, right after ``torch.manual_seed(seed)``.

Importable from every test folder: pytest puts tests/ on sys.path because tests/conftest.py lives there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from producers.synthetic_camera import SyntheticCamera
from steelcore.severstal import CLASS_IDS, CLASS_NAMES
from training.inference import predict_probs
from training.model_bundle import PostprocessParams, load_bundle, save_bundle
from training.networks import build_model, preset

RANDOM_PROVENANCE = {"test": "random weights"}


def random_bundle_fields(
    *,
    name: str,
    description: str,
    seed: int,
    classifier: bool = True,
    class_ids: Sequence[int] = CLASS_IDS,
    class_names: Mapping[int, str] = CLASS_NAMES,
    provenance: Mapping[str, Any] = RANDOM_PROVENANCE,
) -> dict[str, Any]:
    """save_bundle's keyword arguments but ``postprocess``: small-preset networks with random weights."""
    torch.manual_seed(seed)
    cls_config, seg_config = preset("small", "classifier"), preset("small", "segmenter")
    return {
        "name": name,
        "description": description,
        "class_ids": class_ids,
        "class_names": class_names,
        "classifier_config": cls_config if classifier else None,
        "classifier_state": build_model("classifier", cls_config).state_dict() if classifier else None,
        "segmenter_config": seg_config,
        "segmenter_state": build_model("segmenter", seg_config).state_dict(),
        "provenance": dict(provenance),
    }


def save_random_bundle(path: Path, *, postprocess: PostprocessParams, **fields: Any) -> Path:
    """Save a random-weight bundle to ``path`` (``fields`` as random_bundle_fields takes them)."""
    return save_bundle(path, postprocess=postprocess, **random_bundle_fields(**fields))


def synthetic_frames(count: int, seed: int) -> np.ndarray:
    """``count`` frames of the synthetic camera, uint8 [count, 256, 1600]."""
    camera = SyntheticCamera(seed=seed)
    return np.stack([camera.frame(i).image for i in range(count)])


def save_tuned_bundle(
    path: Path,
    fields: Mapping[str, Any],
    frames: np.ndarray,
    tune: Callable[[np.ndarray | None, np.ndarray], PostprocessParams],
) -> Path:
    """Save a bundle whose post-processing is set from its own outputs: saved first with neutral
    thresholds, run in process on ``frames``, saved again with ``tune(cls_probs, seg_probs)``
    (cls_probs None without a classifier)."""
    save_bundle(path, postprocess=PostprocessParams.neutral(len(fields["class_ids"])), **fields)
    cls_probs, seg_probs = predict_probs(load_bundle(path), frames)
    return save_bundle(path, postprocess=tune(cls_probs, seg_probs), **fields)
