"""The model the fault suite serves: random weights, so the suite never waits for a training run.

A segmenter-only bundle (no classifier: one torch stub process instead of two) with a network far
narrower than the "small" preset, exported with the real export path (training.triton_export)
into a real Triton repository. Its pixel thresholds are set from its own probabilities on the
suite's frames, so most frames come out with a few defects and the alarm path is exercised;
the outputs themselves mean nothing and no test compares them with anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# About 20 ms per 256x1600 frame on one CPU thread: inference never dominates a fault case.
TINY_SEGMENTER: dict[str, object] = {
    "num_classes": 4,
    "in_channels": 1,
    "widths": [8, 8, 16, 16, 16],
    "blocks": [1, 1, 1, 1],
    "input_scale": 0.5,
    "space_to_depth": 2,
    "decoder_widths": [16, 8],
    "separable": False,
    "stem_convs": 1,
    "mean": 0.34,
    "std": 0.17,
}
# The top 0.3 % of each class's probabilities on the sample frames become mask pixels.
PIXEL_PERCENTILE = 99.7
MIN_AREA_PX = 16


def write_tiny_repository(root: Path, frames: np.ndarray, seed: int = 7) -> Path:
    """Save the random bundle under ``root/bundle`` and its Triton repository under ``root/repo``."""
    import torch
    from random_bundle import save_tuned_bundle

    from steelcore.severstal import CLASS_IDS, CLASS_NAMES
    from training.model_bundle import PostprocessParams
    from training.networks import build_model
    from training.triton_export import write_repository

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    segmenter = build_model("segmenter", dict(TINY_SEGMENTER))
    fields = dict(
        name="fault-random",
        description="random weights for the fault-injection suite",
        class_ids=CLASS_IDS,
        class_names=CLASS_NAMES,
        classifier_config=None,
        classifier_state=None,
        segmenter_config=dict(TINY_SEGMENTER),
        segmenter_state=segmenter.state_dict(),
        provenance={"test": "random weights"},
    )

    def tune(_cls_probs: np.ndarray | None, seg_probs: np.ndarray) -> PostprocessParams:
        pixel = [float(np.percentile(seg_probs[:, c], PIXEL_PERCENTILE)) for c in range(len(CLASS_IDS))]
        return PostprocessParams([0.0] * len(CLASS_IDS), pixel, [MIN_AREA_PX] * len(CLASS_IDS))

    bundle = save_tuned_bundle(root / "bundle", fields, frames, tune)
    return write_repository(bundle, root / "repo")
