"""Record what a model bundle knows, for the workers' drift monitor (workers/drift_monitor.py):
the input statistics of frames like those it was trained on, and its output shares on them.

    python -m training.drift_reference --model default --data ../shared/data/severstal_real \
        --data data/synth-train --sample 150

Each ``--data`` folder (any layout ``open_dataset`` reads, or a plain folder of images) gives at most
``--sample`` frames, drawn at random with ``--seed``, so a large synthetic set cannot outvote the
real frames. The result is written into the bundle as drift_reference.json.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from steelcore import exit_codes
from steelcore.postprocess import apply_postprocess, class_areas
from training.inference import IMAGE_SUFFIXES, predict_folder, read_frame
from training.model_bundle import load_bundle, resolve_bundle_path
from workers.drift_monitor import INPUT_STATS, DriftReference, frame_input_stats, near_threshold

log = logging.getLogger("steel.drift_reference")

# Probabilities this close to a class's gate count as "unsure" (the near-threshold share).
NEAR_MARGIN = 0.1
DEFAULT_SAMPLE = 150


def frame_paths(folder: Path) -> list[Path]:
    """The image files of a dataset folder: train_images/ of the Kaggle layout, images/ of the
    pair layout, or the folder itself."""
    for sub in ("train_images", "images", "."):
        candidates = sorted(p for p in (folder / sub).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if candidates:
            return candidates
    return []


def build_reference(
    bundle_name: str,
    folders: Sequence[Path],
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> DriftReference:
    """Run the bundle over up to ``sample`` frames of each folder and summarise them."""
    bundle = load_bundle(bundle_name)
    gates = bundle.postprocess.gate_threshold
    rng = random.Random(seed)
    paths: list[Path] = []
    for folder in folders:
        found = frame_paths(Path(folder))
        if not found:
            raise FileNotFoundError(f"no images in {folder}")
        paths += rng.sample(found, min(sample, len(found)))
    inputs: dict[str, list[float]] = {name: [] for name in INPUT_STATS}
    present: list[np.ndarray] = []
    near: list[bool] = []
    for keys, cls, seg in predict_folder(bundle, paths, batch_size=batch_size):
        masks = apply_postprocess(cls, seg, bundle.postprocess)
        present.append(class_areas(masks) > 0)
        probs = cls if cls is not None else seg.reshape(seg.shape[0], seg.shape[1], -1).max(axis=2)
        for i, path in enumerate(keys):
            jpeg = path.stat().st_size if path.suffix.lower() in (".jpg", ".jpeg") else None
            for name, value in frame_input_stats(read_frame(path), jpeg).items():
                inputs[name].append(value)
            near.append(near_threshold(probs[i], gates, NEAR_MARGIN))
        if progress:
            print(f"\rreference: {len(near)}/{len(paths)} frames", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    kept = {name: values for name, values in inputs.items() if values}
    shares = np.concatenate(present).mean(axis=0)
    return DriftReference(
        input_mean={name: float(np.mean(v)) for name, v in kept.items()},
        input_std={name: float(np.std(v)) for name, v in kept.items()},
        defect_share=tuple(float(x) for x in shares),
        near_share=float(np.mean(near)),
        near_margin=NEAR_MARGIN,
        frames=len(near),
        source=", ".join(f"{Path(f).name} (<= {sample})" for f in folders),
        gates=tuple(float(g) for g in gates),
    )


def record_for_bundle(bundle_dir: Path, data: Sequence[str], *, sample: int = DEFAULT_SAMPLE) -> Path:
    """Record the reference of a freshly trained bundle on its training data (``DIR[:FACTOR]``
    specs, as given to `steel train`), into the bundle."""
    from training.mixed_data import parse_specs

    folders = [Path(spec.path) for spec in parse_specs(list(data))]
    reference = build_reference(str(bundle_dir), folders, sample=sample, progress=False)
    path = reference.save(Path(bundle_dir))
    log.info("drift reference of %s frames written to %s", reference.frames, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.drift_reference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="default", help="bundle name or path (default: default)")
    parser.add_argument("--data", type=Path, action="append", required=True, help="dataset or image folder")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="frames per folder at most")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.sample < 1:
        parser.error(f"--sample must be at least 1, got {args.sample}")
    try:
        reference = build_reference(args.model, args.data, sample=args.sample, seed=args.seed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    path = reference.save(resolve_bundle_path(args.model))
    print(f"wrote {path} ({reference.frames} frames)")
    return exit_codes.OK


if __name__ == "__main__":
    raise SystemExit(main())
