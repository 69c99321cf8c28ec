"""How close the synthetic camera is to Severstal: label statistics and image statistics side by side.

Real label statistics come from the shape library (measured on the exact real masks when it
was built), so this runs without the shared data; real image statistics need the sample frames
in SEVERSTAL_SAMPLE_DIR/images and are left out when they are absent.

    python -m producers.synth_stats --n 4000 --seed 0      # writes docs/synthetic_vs_real.{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from producers.defect_shapes import ShapeLibrary, combo_classes, combo_index, default_library
from steelcore import exit_codes
from steelcore.paths import DOCS_DIR, SEVERSTAL_SAMPLE_DIR
from steelcore.severstal import CLASS_IDS, CLASS_NAMES, NUM_CLASSES

QUANTILES = (0.25, 0.5, 0.75)
REPORT_STEM = "synthetic_vs_real"


def _summary(values: Iterable[float]) -> dict[str, float]:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return {"n": 0}
    q1, median, q3 = np.quantile(data, QUANTILES)
    return {
        "n": int(data.size),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "mean": float(data.mean()),
    }


def _combo_label(index: int) -> str:
    return "+".join(str(c) for c in combo_classes(index)) or "clean"


def _frame_shares(combo_counts: np.ndarray) -> dict:
    total = float(combo_counts.sum())
    combos = np.arange(combo_counts.size)
    per_class = {
        c: float(combo_counts[(combos >> b & 1).astype(bool)].sum() / total) for b, c in enumerate(CLASS_IDS)
    }
    pairs = {
        f"{a}&{b}": float(
            combo_counts[((combos >> (a - 1)) & (combos >> (b - 1)) & 1).astype(bool)].sum() / total
        )
        for i, a in enumerate(CLASS_IDS)
        for b in CLASS_IDS[i + 1 :]
    }
    return {
        "frames": int(total),
        "clean_share": float(combo_counts[0] / total),
        "class_share": per_class,
        "pair_share": pairs,
        "combination_share": {_combo_label(k): float(n / total) for k, n in enumerate(combo_counts) if n},
    }


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Brightness, contrast and texture measures of one frame (on-strip part when an edge is visible)."""
    pixels = image.astype(np.float32)
    strip_cols = pixels.mean(axis=0) > 20.0  # off-strip columns are near black
    if strip_cols.sum() >= 64:
        pixels = pixels[:, strip_cols]
    fine = pixels - cv2.GaussianBlur(pixels, (0, 0), 2.0)
    coarse = cv2.GaussianBlur(pixels, (0, 0), 16.0)
    return {
        "mean": float(pixels.mean()),
        "std": float(pixels.std()),
        "fine_std": float(fine.std()),  # sensor noise and fine texture
        "coarse_std": float(coarse.std()),  # illumination and large blotches
        "row_profile_std": float(pixels.mean(axis=1).std()),  # gradient along the strip
        "col_profile_std": float(pixels.mean(axis=0).std()),  # lamp falloff across the strip
        "grad_x": float(np.abs(np.diff(pixels, axis=1)).mean()),
        "grad_y": float(np.abs(np.diff(pixels, axis=0)).mean()),
    }


def _image_summary(stats: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: _summary(s[key] for s in stats) for key in stats[0]} if stats else {}


def real_statistics(library: ShapeLibrary | None = None, images_dir: Path | None = None) -> dict:
    """Real Severstal statistics: frame shares (presence table), mask shapes (library), sample images."""
    library = library or default_library()
    out = _frame_shares(library.combo_counts)
    out["masks"] = int(library.num_groups)
    out["area"] = {c: _summary(library.group_area[library.group_class == c]) for c in CLASS_IDS}
    out["centroid_x"] = {c: _summary(library.group_centroid_x[library.group_class == c]) for c in CLASS_IDS}
    out["components"] = {c: _summary(library.group_components[library.group_class == c]) for c in CLASS_IDS}
    images_dir = SEVERSTAL_SAMPLE_DIR / "images" if images_dir is None else images_dir
    paths = sorted(images_dir.glob("*.*")) if images_dir.is_dir() else []
    images = [im for im in (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths) if im is not None]
    out["image"] = _image_summary([image_statistics(im) for im in images])
    out["image_frames"] = len(images)
    return out


def synthetic_statistics(frames: Iterable, progress: bool = False) -> dict:
    """The same statistics over synthetic frames (SynthFrame objects)."""
    from tqdm import tqdm

    counts = np.zeros(1 << NUM_CLASSES, dtype=np.int64)
    area: dict[int, list[int]] = {c: [] for c in CLASS_IDS}
    centroid: dict[int, list[float]] = {c: [] for c in CLASS_IDS}
    components: dict[int, list[int]] = {c: [] for c in CLASS_IDS}
    images: list[dict[str, float]] = []
    edges = marks = 0
    styles: dict[str, int] = {}
    for frame in tqdm(frames, desc="synthetic stats", unit="frame", disable=not progress):
        present = [bool(m.any()) for m in frame.masks]
        counts[combo_index(present)] += 1
        for class_id, mask, here in zip(CLASS_IDS, frame.masks, present, strict=True):
            if not here:
                continue
            xs = np.nonzero(mask)[1]
            area[class_id].append(int(xs.size))
            centroid[class_id].append(float(xs.mean()))
            components[class_id].append(cv2.connectedComponents(mask, connectivity=8)[0] - 1)
        if len(images) < 200:  # image statistics settle long before the label ones
            images.append(image_statistics(frame.image))
        edges += frame.edge is not None
        marks += bool(frame.harmless.any())
        styles[frame.style] = styles.get(frame.style, 0) + 1
    out = _frame_shares(counts)
    out["masks"] = int(sum(len(v) for v in area.values()))
    out["area"] = {c: _summary(area[c]) for c in CLASS_IDS}
    out["centroid_x"] = {c: _summary(centroid[c]) for c in CLASS_IDS}
    out["components"] = {c: _summary(components[c]) for c in CLASS_IDS}
    out["image"] = _image_summary(images)
    out["image_frames"] = len(images)
    total = max(int(counts.sum()), 1)
    out["edge_share"] = edges / total
    out["harmless_mark_share"] = marks / total
    out["style_share"] = {k: v / total for k, v in sorted(styles.items())}
    return out


def compare(n: int = 4000, seed: int = 0, progress: bool = False, **camera_kwargs: object) -> dict:
    """Statistics of ``n`` frames of ``SyntheticCamera(seed, **camera_kwargs)`` next to the real ones."""
    from producers.synthetic_camera import SyntheticCamera

    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    camera = SyntheticCamera(seed, **camera_kwargs)
    synthetic = synthetic_statistics((camera.frame(i) for i in range(n)), progress=progress)
    return {"seed": seed, "n": n, "real": real_statistics(camera.library), "synthetic": synthetic}


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _quartiles(s: dict, digits: int = 0) -> str:
    if not s.get("n"):
        return "-"
    return f"{_fmt(s['median'], digits)} ({_fmt(s['q1'], digits)}-{_fmt(s['q3'], digits)})"


def table_rows(report: dict) -> list[tuple[str, str, str]]:
    """(measure, real, synthetic) rows for the markdown table."""
    real, synth = report["real"], report["synthetic"]
    rows = [("frames", f"{real['frames']:,} (masks: {real['masks']:,})", f"{synth['frames']:,}")]
    rows.append(("clean share", f"{real['clean_share']:.3f}", f"{synth['clean_share']:.3f}"))
    for c in CLASS_IDS:
        rows.append(
            (
                f"frames with class {c} ({CLASS_NAMES[c]})",
                f"{real['class_share'][c]:.3f}",
                f"{synth['class_share'][c]:.3f}",
            )
        )
    for key in real["pair_share"]:
        rows.append(
            (
                f"frames with classes {key}",
                f"{real['pair_share'][key]:.4f}",
                f"{synth['pair_share'][key]:.4f}",
            )
        )
    for name, key, digits in (
        ("mask area px", "area", 0),
        ("mask centre x", "centroid_x", 0),
        ("components", "components", 0),
    ):
        for c in CLASS_IDS:
            rows.append(
                (
                    f"class {c} {name}: median (q1-q3)",
                    _quartiles(real[key][c], digits),
                    _quartiles(synth[key][c], digits),
                )
            )
    for key in ("mean", "std", "fine_std", "coarse_std", "row_profile_std", "col_profile_std"):
        if key in real["image"] and key in synth["image"]:
            rows.append(
                (
                    f"image {key}: median (q1-q3)",
                    _quartiles(real["image"][key], 1),
                    _quartiles(synth["image"][key], 1),
                )
            )
    return rows


def render_markdown(report: dict) -> str:
    real, synth = report["real"], report["synthetic"]
    lines = [
        "# Synthetic camera vs real Severstal",
        "",
        f"{report['n']:,} synthetic frames (`SyntheticCamera(seed={report['seed']})`, defaults) against "
        f"the real labels: frame shares from the per-class presence flags of {real['frames']:,} Kaggle "
        f"training frames, mask shapes from {real['masks']:,} real masks (the shape library), image "
        f"measures from the {real['image_frames']} real sample frames (on-strip columns only; synthetic: "
        f"the first {synth['image_frames']} frames, before JPEG).",
        "",
        f"Regenerate: `python -m producers.synth_stats --n {report['n']} --seed {report['seed']}` "
        "(writes this file and the .json).",
        "",
        "| measure | real | synthetic |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {r} | {s} |" for m, r, s in table_rows(report)]
    lines += [
        "",
        "Class presence combinations (share of frames):",
        "",
        "| combination | real | synthetic |",
        "|---|---|---|",
    ]
    real_combos, synth_combos = real["combination_share"], synth["combination_share"]
    for k in sorted(set(real_combos) | set(synth_combos), key=lambda k: -real_combos.get(k, 0.0)):
        lines.append(f"| {k} | {real_combos.get(k, 0.0):.4f} | {synth_combos.get(k, 0.0):.4f} |")
    styles = ", ".join(f"{k} {v:.2f}" for k, v in synth["style_share"].items())
    lines += [
        "",
        f"Synthetic only: {synth['edge_share']:.3f} of frames at a strip edge, "
        f"{synth['harmless_mark_share']:.3f} with harmless marks (oil spots, water stains; never inside "
        f"a mask); surface styles {styles}.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict, stem: Path = DOCS_DIR / REPORT_STEM) -> tuple[Path, Path]:
    """Write ``stem``.md and ``stem``.json; returns their paths."""
    md_path, json_path = stem.with_suffix(".md"), stem.with_suffix(".json")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(render_markdown(report))
    json_path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return md_path, json_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="synthetic vs real statistics")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=DOCS_DIR / REPORT_STEM, help="path stem for .md and .json"
    )
    args = parser.parse_args(argv)
    try:
        report = compare(args.n, args.seed, progress=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    md_path, json_path = write_report(report, args.out)
    print(render_markdown(report))
    print(f"wrote {md_path} and {json_path}")
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
