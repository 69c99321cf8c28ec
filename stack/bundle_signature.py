"""What a candidate bundle must share with production to be served by the same Triton models (input
shape, classes, classifier gate), read from its model.json without loading weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stack.lifecycle_errors import BadCandidate
from steelcore.settings import Settings, get_settings
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH


@dataclass(frozen=True)
class BundleSignature:
    """What a candidate must share with production to replace it in the same Triton models."""

    name: str
    input_shape: str  # "HxW"
    class_ids: tuple[int, ...]
    has_classifier: bool


def bundle_signature(name: str, settings: Settings | None = None) -> BundleSignature:
    """Read ``models_dir/name/model.json`` (no weights). The input shape is model.json's optional
    ``input_shape`` [H, W]; without it the bundle takes the Severstal frame every export serves."""
    settings = settings or get_settings()
    if not name or "/" in name or name.startswith("."):
        raise BadCandidate(f"{name!r} is not a bundle name (a folder under {settings.models_dir})")
    path = Path(settings.models_dir) / name
    meta_path = path / "model.json"
    if not meta_path.is_file():
        available = sorted(p.name for p in Path(settings.models_dir).glob("*/model.json") for p in [p.parent])
        raise BadCandidate(
            f"no model bundle {name!r} in {settings.models_dir} (bundles: {', '.join(available) or 'none'})"
        )
    try:
        meta = json.loads(meta_path.read_text())
        shape = meta.get("input_shape") or [FRAME_HEIGHT, FRAME_WIDTH]
        height, width = (int(v) for v in shape)
        class_ids = tuple(int(c) for c in meta["class_ids"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BadCandidate(f"bundle {name!r}: unreadable {meta_path}: {exc}") from exc
    return BundleSignature(name, f"{height}x{width}", class_ids, meta.get("classifier") is not None)


def check_compatible(candidate: BundleSignature, production: BundleSignature) -> None:
    """Refuse (BadCandidate) a candidate the production models' configs cannot serve."""
    if candidate.input_shape != production.input_shape:
        raise BadCandidate(
            f"bundle {candidate.name!r} takes {candidate.input_shape} frames, production "
            f"({production.name}) takes {production.input_shape}: it cannot serve the same line"
        )
    if candidate.class_ids != production.class_ids:
        raise BadCandidate(
            f"bundle {candidate.name!r} has classes {list(candidate.class_ids)}, production "
            f"({production.name}) {list(production.class_ids)}"
        )
    if candidate.has_classifier != production.has_classifier:
        have = "has" if candidate.has_classifier else "has no"
        raise BadCandidate(
            f"bundle {candidate.name!r} {have} classifier gate, unlike production ({production.name}): "
            "the served models' configs differ"
        )
