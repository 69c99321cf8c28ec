"""`steel bench rle`: steelcore.rle against the RLE code most Severstal Kaggle kernels used.

Cases are full 256x1600 frames at 0%, 1%, 10% and 50% defect area made of
seeded elliptical blobs (the shape of real defects: one run per column they
cover), a 10% salt-noise frame (the worst case: one run per pixel pair), and,
when the shared sample is present, real label strings. For each case both
implementations run side by side, their outputs are checked to agree, and the
ratio baseline/ours is reported (> 1 means steelcore.rle is faster).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from benchmarks import report
from steelcore import exit_codes
from steelcore.paths import SEVERSTAL_SAMPLE_DIR
from steelcore.rle import decode, encode
from steelcore.severstal import FRAME_SHAPE

NAME = "rle"
BLOB_AREAS = (0.0, 0.01, 0.10, 0.50)
NOISE_AREA = 0.10
REAL_LABELS = SEVERSTAL_SAMPLE_DIR / "labels" / "train_rle_subset.csv"


# --- Baseline: the implementation copied across most Kaggle kernels (kept verbatim in spirit) ---


def kaggle_encode(img: np.ndarray) -> str:
    """BASELINE (Kaggle kernels): mask -> RLE via a padded copy and np.where."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def kaggle_decode(mask_rle: str, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """BASELINE (Kaggle kernels): RLE -> mask via a Python loop over the runs."""
    s = mask_rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2]))
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape, order="F")


# --- Cases ---


def blob_mask(area: float, rng: np.random.Generator, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """Filled random ellipses, elongated along the strip, added until ``area`` of the frame is covered."""
    height, width = shape
    mask = np.zeros(shape, dtype=np.uint8)
    target = area * height * width
    covered = 0
    while covered < target:
        # Each blob is at most a quarter of the target (so a frame holds several)
        # and at most what is still missing (so the total overshoots little).
        blob_area = max(20.0, min(target / 4, target - covered) * rng.uniform(0.5, 1.0))
        aspect = rng.uniform(1.5, 6.0)
        axes = (
            max(1, round(np.sqrt(blob_area * aspect / np.pi))),
            max(1, min(height // 2, round(np.sqrt(blob_area / (aspect * np.pi))))),
        )
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(-30, 30)), 0, 360, 1, thickness=-1)
        covered = np.count_nonzero(mask)
    return mask


@dataclass(frozen=True)
class Case:
    name: str
    masks: list[np.ndarray]
    strings: list[str]  # the canonical encodings of masks, checked against both implementations


def synthetic_cases(seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for area in BLOB_AREAS:
        mask = blob_mask(area, rng)
        cases.append(Case(f"blobs {area:.0%}", [mask], [encode(mask)]))
    noise = (rng.random(FRAME_SHAPE) < NOISE_AREA).astype(np.uint8)
    cases.append(Case(f"noise {NOISE_AREA:.0%}", [noise], [encode(noise)]))
    return cases


def real_case(count: int, path: Path = REAL_LABELS) -> Case | None:
    if count <= 0 or not path.exists():
        return None
    with path.open(newline="") as handle:
        strings = [row["EncodedPixels"] for row in csv.DictReader(handle) if row["EncodedPixels"]]
    picked = [strings[i] for i in np.linspace(0, len(strings) - 1, min(count, len(strings))).astype(int)]
    return Case(f"real labels x{len(picked)}", [decode(s) for s in picked], picked)


# --- Measurement ---


def outputs_agree(case: Case) -> bool:
    for mask, text in zip(case.masks, case.strings, strict=True):
        if encode(mask) != text or kaggle_encode(mask) != text:
            return False
        ours, theirs = decode(text), kaggle_decode(text)
        if not (np.array_equal(ours, theirs) and np.array_equal(ours, mask != 0)):
            return False
    return True


def _timed(fn: Callable[[Any], object], items: list[Any], args: argparse.Namespace) -> report.Timing:
    def batch() -> None:
        for item in items:
            fn(item)

    return report.time_callable(batch, warmup=args.warmup, repeats=args.repeats).per_item(len(items))


def measure(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    area = float(np.mean([np.count_nonzero(m) / m.size for m in case.masks]))
    runs = float(np.mean([len(s.split()) // 2 for s in case.strings]))
    result: dict[str, Any] = {
        "case": case.name,
        "masks": len(case.masks),
        "area_fraction": area,
        "runs_per_mask": runs,
        "outputs_agree": outputs_agree(case),
    }
    for op, ours, baseline, inputs in (
        ("encode", encode, kaggle_encode, case.masks),
        ("decode", decode, kaggle_decode, case.strings),
    ):
        ours_t = _timed(ours, inputs, args)
        base_t = _timed(baseline, inputs, args)
        result[op] = {
            "ours": ours_t.to_dict(),
            "baseline": base_t.to_dict(),
            "ratio": report.ratio(base_t.median_us, ours_t.median_us),
        }
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    report.add_common_arguments(parser, repeats=30, warmup=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic masks (default 0)")
    parser.add_argument(
        "--real",
        type=int,
        default=50,
        help="real label strings to include as a case, 0 for none (default 50)",
    )


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    cases = synthetic_cases(args.seed)
    real = real_case(args.real)
    if real is not None:
        cases.append(real)
    results = [measure(case, args) for case in tqdm(cases, desc="rle cases", unit="case", disable=None)]

    headers = [
        "case",
        "area %",
        "runs",
        "enc ours us",
        "enc base us",
        "enc x",
        "dec ours us",
        "dec base us",
        "dec x",
        "agree",
    ]
    rows = [
        [
            r["case"],
            100 * r["area_fraction"],
            r["runs_per_mask"],
            r["encode"]["ours"]["median_us"],
            r["encode"]["baseline"]["median_us"],
            r["encode"]["ratio"],
            r["decode"]["ours"]["median_us"],
            r["decode"]["baseline"]["median_us"],
            r["decode"]["ratio"],
            r["outputs_agree"],
        ]
        for r in results
    ]
    report.print_table(
        headers,
        rows,
        title=f"RLE per {FRAME_SHAPE[0]}x{FRAME_SHAPE[1]} mask, median of {args.repeats} "
        "(x = baseline / ours, > 1 means steelcore.rle is faster)",
    )
    config = {
        "shape": list(FRAME_SHAPE),
        "seed": args.seed,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "real_strings": 0 if real is None else len(real.strings),
        "baseline": "Kaggle-kernel mask2rle / rle2mask",
    }
    path = report.write_results(NAME, results, config, args.json)
    print(f"results: {path}")
    if not args.no_plot:
        chart = report.save_bar_chart(
            path.with_suffix(".png"),
            "steelcore.rle speed-up over the Kaggle-kernel RLE",
            [r["case"] for r in results],
            {
                "encode": [r["encode"]["ratio"] for r in results],
                "decode": [r["decode"]["ratio"] for r in results],
            },
            "baseline time / ours",
        )
        print(f"chart: {chart}")
    if not all(r["outputs_agree"] for r in results):
        print("steel bench rle: the two implementations disagree on at least one case")
        return exit_codes.FAILURE
    return exit_codes.OK
