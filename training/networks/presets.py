"""Named network configurations and the defaults of optional config keys.

A config is a plain JSON-able dict (stored in run directories and model bundles) accepted by
``training.networks.build_model``. Every key is documented in ``CONFIG_KEYS``. Presets spell out every
key, so a stored config does not change meaning when a default changes here.
"""

from __future__ import annotations

import copy
from typing import Any

from steelcore.severstal import NUM_CLASSES

CONFIG_KEYS: dict[str, str] = {
    "num_classes": "output logits (classifier) or logit maps (segmenter), one per defect class",
    "in_channels": "input channels (1: grey frames)",
    "widths": "encoder widths: [stem, stage1, stage2, stage3, stage4] (strides 2, 4, 8, 16, 32)",
    "blocks": "basic blocks per encoder stage (4 entries)",
    "input_scale": "resize factor applied to the input first (1.0 = full resolution, 0.5 = half each way)",
    "space_to_depth": "fold each f x f pixel block into channels (1 = off); the net runs at input_scale / f",
    "decoder_widths": "segmenter only: widths after each x2 upsampling, 1 to 5 entries (5 reaches stride 1)",
    "separable": "depthwise-separable 3x3 convolutions in the non-downsampling convolutions",
    "stem_convs": "3x3 convolutions in the stem (the first has stride 2)",
    "mean": "input normalisation: (x - mean) / std, x in [0, 1]",
    "std": "input normalisation: (x - mean) / std, x in [0, 1]",
    "dropout": "classifier only: dropout before the linear head",
}

# Grey-level statistics of Severstal frames scaled to [0, 1].
_INPUT_NORM: dict[str, Any] = {"mean": 0.34, "std": 0.17}

# Defaults for keys a config may leave out; the keys without a default are required.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "in_channels": 1,
    "space_to_depth": 1,
    "separable": False,
    "stem_convs": 1,
    **_INPUT_NORM,
    "dropout": 0.0,
}


# Keys that only one task accepts.
TASK_ONLY_KEYS: dict[str, frozenset[str]] = {
    "classifier": frozenset({"dropout"}),
    "segmenter": frozenset({"decoder_widths"}),
}


def allowed_keys(task: str) -> set[str]:
    """The config keys ``task`` accepts."""
    others = [keys for name, keys in TASK_ONLY_KEYS.items() if name != task]
    return set(CONFIG_KEYS).difference(*others)


def _config(task: str, **keys: Any) -> dict[str, Any]:
    defaults = {k: v for k, v in OPTIONAL_DEFAULTS.items() if k in allowed_keys(task)}
    return {"num_classes": NUM_CLASSES, **defaults, **keys}


# Why "small" looks like this (candidates compared side by side; `steel bench model` re-measures it):
# - space_to_depth 2 folds each 2x2 pixel block into 4 channels, so the net runs at 128x800 without the
#   averaging a resize would do to 1-3 px scratches; the sub-pixel head returns full-resolution logits.
# - the time of such a net goes to its highest-resolution layers, so widths stay narrow there (24) and
#   the capacity goes to the cheap low-resolution stages (64-128 wide, two blocks each).
# - the classifier only answers "is class c anywhere": half resolution, folded, is plenty.
_SMALL_ENCODER: dict[str, Any] = {"widths": [24, 32, 64, 96, 128], "blocks": [1, 2, 2, 2]}
_RESNET18: dict[str, Any] = {"widths": [64, 64, 128, 256, 512], "blocks": [2, 2, 2, 2]}
_RESNET34: dict[str, Any] = {"widths": [64, 64, 128, 256, 512], "blocks": [3, 4, 6, 3]}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # CPU: classifier + segmenter within 50 ms per 256x1600 frame at batch 8 on 2 cores.
    "small": {
        "classifier": _config("classifier", **_SMALL_ENCODER, input_scale=0.5, space_to_depth=2, dropout=0.1),
        "segmenter": _config(
            "segmenter",
            **_SMALL_ENCODER,
            decoder_widths=[96, 64, 32, 24],
            input_scale=1.0,
            space_to_depth=2,
            stem_convs=2,
        ),
    },
    # GPU: ResNet-18 classifier and ResNet-34 ResUNet, both at full resolution.
    "large": {
        "classifier": _config("classifier", **_RESNET18, input_scale=1.0, dropout=0.2),
        "segmenter": _config(
            "segmenter", **_RESNET34, decoder_widths=[256, 128, 64, 32, 16], input_scale=1.0
        ),
    },
}


def preset(name: str, task: str) -> dict[str, Any]:
    """A copy of ``PRESETS[name][task]`` (callers may edit it freely); ValueError naming the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    if task not in PRESETS[name]:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(PRESETS[name])}")
    return copy.deepcopy(PRESETS[name][task])
