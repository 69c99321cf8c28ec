"""Time Triton's post-processing step per frame (docs/capacity.md, sections 2 and 3).

What the ``postprocess`` model does for a batch of 8: ``apply_postprocess`` (gate, pixel threshold,
minimum area, overlaps) with the shipped default bundle's parameters, ``class_areas`` and
``encode_stack``, on one core (cv2.setNumThreads(1), as in the model). Input: 8 real Severstal
frames' masks from the sample (shared/data/severstal_sample), probabilities = 0.85 x mask + noise,
the classifier gate open.

    .venv/bin/python docs/capacity/time_postprocess.py [--repeats 20]   # -> docs/capacity/postprocess.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from benchmarks.report import time_callable, write_results
from steelcore import rle
from steelcore.kaggle_csv import read_labels
from steelcore.paths import MODELS_DIR, SEVERSTAL_SAMPLE_DIR
from steelcore.postprocess import apply_postprocess, class_areas
from training.model_bundle import PostprocessParams

BATCH = 8
OUT = Path(__file__).resolve().parent / "postprocess.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    labels = read_labels(SEVERSTAL_SAMPLE_DIR / "labels" / "train_rle_subset.csv")
    frames = [image_id for image_id in sorted(labels) if any(labels[image_id])][:BATCH]
    masks = np.stack([np.stack([rle.decode(r) for r in labels[i]]) for i in frames]).astype(np.float32)
    noise = np.random.default_rng(0).random(masks.shape, dtype=np.float32)
    probs = (0.85 * masks + 0.1 * noise).astype(np.float32)
    cls = np.full(masks.shape[:2], 0.99, np.float32)
    params = PostprocessParams.from_json((MODELS_DIR / "default" / "postprocess.json").read_text())

    def step() -> None:
        out = apply_postprocess(cls, probs, params)
        class_areas(out)
        for frame_masks in out:
            rle.encode_stack(frame_masks)

    timing = time_callable(step, warmup=2, repeats=args.repeats)
    per_frame_ms = {k: v / len(frames) / 1000 for k, v in timing.to_dict().items() if k.endswith("_us")}
    print(
        f"post-processing per frame (batch {len(frames)}, one core): "
        + ", ".join(f"{k.removesuffix('_us')} {v:.2f} ms" for k, v in per_frame_ms.items())
    )
    config = {"frames": frames, "cv2_threads": 1, "params": "models/default/postprocess.json"}
    result = {"batch": len(frames), "ms_per_frame": per_frame_ms, "us_per_batch": timing.to_dict()}
    print(f"results in {write_results('postprocess', [result], config, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
