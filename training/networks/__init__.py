"""Networks of the product: a ResNet classifier (defect presence) and a ResUNet segmenter (defect masks).

Usage: ``build_model("segmenter", PRESETS["small"]["segmenter"])(frames)`` maps float32 frames
[B, 1, H, W] in [0, 1] to logits [B, 4, H, W].
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from training.networks.presets import CONFIG_KEYS, OPTIONAL_DEFAULTS, PRESETS, allowed_keys, preset
from training.networks.resnet_classifier import ResNetClassifier
from training.networks.resunet import ResUNet

Task = Literal["classifier", "segmenter"]
TASKS: tuple[str, ...] = ("classifier", "segmenter")


def resolve_config(task: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config with optional keys filled in; ValueError naming unknown or missing keys."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")
    if not isinstance(config, dict):
        raise ValueError(f"network config must be a dict, got {type(config).__name__}")
    allowed = allowed_keys(task)
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"unknown {task} config keys {unknown}; allowed: {sorted(allowed)}")
    resolved = {k: v for k, v in OPTIONAL_DEFAULTS.items() if k in allowed}
    resolved.update(config)
    missing = sorted(allowed - set(resolved))
    if missing:
        raise ValueError(f"{task} config is missing keys {missing}")
    return resolved


def build_model(task: Task, config: dict[str, Any]) -> nn.Module:
    """A freshly initialised classifier or segmenter described by ``config`` (see ``CONFIG_KEYS``)."""
    resolved = resolve_config(task, config)
    try:
        return _construct(task, resolved)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad {task} config {config}: {exc}") from exc


def _construct(task: str, resolved: dict[str, Any]) -> nn.Module:
    common = {
        "num_classes": int(resolved["num_classes"]),
        "in_channels": int(resolved["in_channels"]),
        "widths": [int(w) for w in resolved["widths"]],
        "blocks": [int(b) for b in resolved["blocks"]],
        "input_scale": float(resolved["input_scale"]),
        "mean": float(resolved["mean"]),
        "std": float(resolved["std"]),
        "separable": bool(resolved["separable"]),
        "stem_convs": int(resolved["stem_convs"]),
        "space_to_depth": int(resolved["space_to_depth"]),
    }
    if task == "classifier":
        return ResNetClassifier(**common, dropout=float(resolved["dropout"]))
    return ResUNet(**common, decoder_widths=[int(w) for w in resolved["decoder_widths"]])


__all__ = [
    "CONFIG_KEYS",
    "PRESETS",
    "TASKS",
    "ResNetClassifier",
    "ResUNet",
    "Task",
    "build_model",
    "preset",
    "resolve_config",
]
