"""Model bundles: everything needed to run a shipped model, in one folder.

    models/<name>/
        model.json        name, description, class ids/names, network configs, provenance
        classifier.pt     state_dict of the classifier (absent when the bundle has none)
        segmenter.pt      state_dict of the ResUNet segmenter
        postprocess.json  gating / pixel thresholds and minimum areas, one entry per class
        metrics.json      optional, written by `steel eval`

A bare name resolves to the models directory (``Settings.models_dir``, by default
``steelcore.paths.MODELS_DIR``); anything that looks like a path is used as given.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steelcore.settings import get_settings
from training.json_files import atomic_write
from training.networks import build_model

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
CLASSIFIER_WEIGHTS = "classifier.pt"
SEGMENTER_WEIGHTS = "segmenter.pt"
POSTPROCESS_JSON = "postprocess.json"
METRICS_JSON = "metrics.json"


@dataclass
class PostprocessParams:
    """Per-class post-processing of the network outputs (entry i belongs to the bundle's i-th class).

    gate_threshold: classifier probability below which the whole class is cleared from the frame.
    pixel_threshold: segmenter probability at or above which a pixel is defective.
    min_area: a class's mask is cleared when fewer pixels than this survive.
    """

    gate_threshold: list[float]
    pixel_threshold: list[float]
    min_area: list[int]

    def __post_init__(self) -> None:
        self.gate_threshold = [float(v) for v in self.gate_threshold]
        self.pixel_threshold = [float(v) for v in self.pixel_threshold]
        self.min_area = [int(v) for v in self.min_area]
        lengths = {len(self.gate_threshold), len(self.pixel_threshold), len(self.min_area)}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "postprocess params need one non-empty entry per class in each list, got lengths "
                f"gate_threshold={len(self.gate_threshold)}, pixel_threshold={len(self.pixel_threshold)}, "
                f"min_area={len(self.min_area)}"
            )
        for key in ("gate_threshold", "pixel_threshold"):
            values = getattr(self, key)
            if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
                raise ValueError(f"{key} values must lie in [0, 1], got {values}")
        if any(v < 0 for v in self.min_area):
            raise ValueError(f"min_area values must be >= 0, got {self.min_area}")

    @property
    def num_classes(self) -> int:
        return len(self.min_area)

    @classmethod
    def neutral(cls, num_classes: int) -> PostprocessParams:
        """No gating, pixel threshold 0.5, no minimum area: the untuned starting point."""
        return cls([0.0] * num_classes, [0.5] * num_classes, [0] * num_classes)

    def to_json(self) -> dict[str, list[float] | list[int]]:
        """A JSON-serialisable dict (the content of postprocess.json)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> PostprocessParams:
        """From a dict (or a JSON string) as written by ``to_json``; ValueError naming what is wrong."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ValueError(f"postprocess params are not valid JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ValueError(f"postprocess params must be a JSON object, got {type(data).__name__}")
        expected = {"gate_threshold", "pixel_threshold", "min_area"}
        missing, unknown = sorted(expected - set(data)), sorted(set(data) - expected)
        if missing or unknown:
            raise ValueError(f"postprocess params: missing keys {missing}, unknown keys {unknown}")
        for key in expected:
            if not isinstance(data[key], list):
                raise ValueError(f"postprocess params: {key} must be a list, got {data[key]!r}")
        try:
            return cls(list(data["gate_threshold"]), list(data["pixel_threshold"]), list(data["min_area"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"postprocess params: {exc}") from exc


@dataclass
class ModelBundle:
    """A loaded bundle; the networks are on the CPU (or the requested device) in eval() mode, with
    channels-last weights (faster convolutions; inputs and outputs stay ordinary contiguous tensors)."""

    name: str
    path: Path
    meta: dict[str, Any]
    class_ids: list[int]
    class_names: dict[int, str]
    classifier: nn.Module | None
    segmenter: nn.Module
    postprocess: PostprocessParams
    metrics: dict[str, Any] | None = field(default=None)
    # Set by training.openvino_bundle.attach_runtime: a callable frames -> (cls_probs, seg_probs) that
    # predict_probs runs instead of the eager networks (the OpenVINO CPU runtime).
    runtime: Any = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


def models_dir() -> Path:
    return Path(get_settings().models_dir)


def list_bundles() -> list[Path]:
    """Bundle folders (those holding a model.json) in the models directory, sorted by name."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / MODEL_JSON).is_file())


def resolve_bundle_path(name_or_path: str | Path) -> Path:
    """A bare name means models_dir()/name; a Path, or a string with a separator or leading dot, is a path."""
    if isinstance(name_or_path, Path):
        return name_or_path
    text = str(name_or_path)
    if not text:
        raise ValueError("model name must not be empty")
    if "/" in text or os.sep in text or text.startswith("."):
        return Path(text)
    return models_dir() / text


def _missing_bundle(path: Path, what: str) -> FileNotFoundError:
    available = [p.name for p in list_bundles()]
    listing = ", ".join(available) if available else "none"
    return FileNotFoundError(f"{what} {path} (bundles available in {models_dir()}: {listing})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _load_network(task: str, config: Any, weights: Path, device: torch.device | str) -> nn.Module:
    if not isinstance(config, dict):
        raise ValueError(f"model.json: {task}.config must be an object, got {config!r}")
    if not weights.is_file():
        raise FileNotFoundError(f"bundle is missing its {task} weights {weights}")
    model = build_model(task, config)  # type: ignore[arg-type]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not match the {task} config in model.json: {exc}") from exc
    # Channels-last weights make the CPU convolutions of the small nets about 1.5x faster (measured by
    # `steel bench model`); outputs keep the default layout, so callers see no difference.
    return model.to(device=device, memory_format=torch.channels_last).eval()


def load_bundle(name_or_path: str | Path, *, device: torch.device | str = "cpu") -> ModelBundle:
    """Load a bundle by name (models directory) or path. FileNotFoundError names the path and the
    available bundles; ValueError names what is malformed."""
    path = resolve_bundle_path(name_or_path)
    if not path.is_dir():
        raise _missing_bundle(path, "no model bundle at")
    if not (path / MODEL_JSON).is_file():
        raise _missing_bundle(path / MODEL_JSON, "model bundle has no")
    meta = _read_json(path / MODEL_JSON)
    if not isinstance(meta, dict):
        raise ValueError(f"{path / MODEL_JSON} must hold a JSON object")
    for key in ("class_ids", "class_names", "segmenter"):
        if key not in meta:
            raise ValueError(f"{path / MODEL_JSON} is missing {key!r}")
    class_ids = [int(c) for c in meta["class_ids"]]
    class_names = {int(k): str(v) for k, v in meta["class_names"].items()}
    if sorted(class_names) != sorted(class_ids):
        raise ValueError(
            f"{path / MODEL_JSON}: class_names keys {sorted(class_names)} != class_ids {class_ids}"
        )

    segmenter = _load_network(
        "segmenter", (meta["segmenter"] or {}).get("config"), path / SEGMENTER_WEIGHTS, device
    )
    classifier = None
    if meta.get("classifier"):
        classifier = _load_network(
            "classifier", meta["classifier"].get("config"), path / CLASSIFIER_WEIGHTS, device
        )
    for task, model in (("segmenter", segmenter), ("classifier", classifier)):
        if model is not None and model.num_classes != len(class_ids):
            raise ValueError(f"{path}: {task} has {model.num_classes} outputs but {len(class_ids)} class ids")

    if not (path / POSTPROCESS_JSON).is_file():
        raise _missing_bundle(path / POSTPROCESS_JSON, "model bundle has no")
    postprocess = PostprocessParams.from_json(_read_json(path / POSTPROCESS_JSON))
    if postprocess.num_classes != len(class_ids):
        raise ValueError(
            f"{path / POSTPROCESS_JSON} has {postprocess.num_classes} entries "
            f"but the model has {len(class_ids)} classes"
        )
    metrics = _read_json(path / METRICS_JSON) if (path / METRICS_JSON).is_file() else None
    return ModelBundle(
        name=str(meta.get("name", path.name)),
        path=path,
        meta=meta,
        class_ids=class_ids,
        class_names=class_names,
        classifier=classifier,
        segmenter=segmenter,
        postprocess=postprocess,
        metrics=metrics,
    )


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda h: h.write((json.dumps(data, indent=2) + "\n").encode()))


def save_bundle(
    path: str | Path,
    *,
    name: str,
    description: str,
    class_ids: Sequence[int],
    class_names: Mapping[int, str],
    classifier_config: dict[str, Any] | None,
    classifier_state: Mapping[str, torch.Tensor] | None,
    segmenter_config: dict[str, Any],
    segmenter_state: Mapping[str, torch.Tensor],
    postprocess: PostprocessParams,
    provenance: dict[str, Any],
) -> Path:
    """Write a bundle folder (created if needed; an existing metrics.json is kept) and return its path.

    The configs and state dicts are checked against each other by building the networks first, so a
    bundle that cannot be loaded is never written.
    """
    path = Path(path)
    class_ids = [int(c) for c in class_ids]
    names = {int(k): str(v) for k, v in class_names.items()}
    if not class_ids or len(set(class_ids)) != len(class_ids):
        raise ValueError(f"class_ids must be non-empty and unique, got {class_ids}")
    if sorted(names) != sorted(class_ids):
        raise ValueError(f"class_names keys {sorted(names)} must equal class_ids {class_ids}")
    if (classifier_config is None) != (classifier_state is None):
        raise ValueError("give both classifier_config and classifier_state, or neither")
    if postprocess.num_classes != len(class_ids):
        raise ValueError(f"postprocess has {postprocess.num_classes} entries for {len(class_ids)} classes")
    networks = [("segmenter", segmenter_config, segmenter_state)]
    if classifier_config is not None and classifier_state is not None:
        networks.append(("classifier", classifier_config, classifier_state))
    for task, config, state in networks:
        model = build_model(task, config)  # type: ignore[arg-type]
        try:
            model.load_state_dict(dict(state))
        except RuntimeError as exc:
            raise ValueError(f"{task} state dict does not match its config: {exc}") from exc
        if model.num_classes != len(class_ids):
            raise ValueError(
                f"{task} has {model.num_classes} outputs but {len(class_ids)} class ids were given"
            )

    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "class_ids": class_ids,
        "class_names": {str(k): v for k, v in names.items()},
        "classifier": None if classifier_config is None else {"config": classifier_config},
        "segmenter": {"config": segmenter_config},
        "provenance": provenance,
    }
    atomic_write(path / SEGMENTER_WEIGHTS, lambda h: torch.save(dict(segmenter_state), h))
    if classifier_state is not None:
        atomic_write(path / CLASSIFIER_WEIGHTS, lambda h: torch.save(dict(classifier_state), h))
    else:
        (path / CLASSIFIER_WEIGHTS).unlink(missing_ok=True)
    _write_json(path / POSTPROCESS_JSON, postprocess.to_json())
    # model.json last: its presence is what marks the folder as a bundle.
    _write_json(path / MODEL_JSON, meta)
    return path
