"""Contact sheet of synthetic frames: each shown raw and with its class masks overlaid.

    python -m producers.synth_preview --seed 0          # writes docs/synthetic_contact_sheet.png

The examples are picked from the first frames of the seed so that every class, a frame with
several classes, a strip edge, harmless marks and a checker-plate surface all appear.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from producers.synthetic_camera import SyntheticCamera, SynthFrame
from steelcore import exit_codes
from steelcore.paths import DOCS_DIR
from steelcore.severstal import CLASS_COLOURS_RGB, CLASS_IDS, CLASS_NAMES

CONTACT_SHEET = DOCS_DIR / "synthetic_contact_sheet.png"
HARMLESS_COLOUR_RGB = (255, 255, 255)
_LABEL_HEIGHT = 26
_SCALE = 0.5  # frames are shown at half size so that eight fit on one screen

# What the sheet should show, in order; each example is the first frame that matches.
WANTED: tuple[tuple[str, Callable[[SynthFrame], bool]], ...] = (
    ("pitting", lambda f: 1 in f.classes),
    ("inclusion", lambda f: 2 in f.classes),
    ("scratches", lambda f: f.classes == (3,)),
    ("patches", lambda f: 4 in f.classes),
    ("several classes", lambda f: len(f.classes) >= 2),
    ("strip edge", lambda f: f.edge is not None and bool(f.classes)),
    ("clean, harmless marks", lambda f: not f.classes and bool(f.harmless.any())),
    ("checker plate", lambda f: f.style == "checker"),
)


def pick_examples(camera: SyntheticCamera, max_scan: int = 2000) -> list[tuple[str, SynthFrame]]:
    """One frame per WANTED entry (skipping a frame already picked), scanning frames 0, 1, 2, ..."""
    picked: list[tuple[str, SynthFrame]] = []
    pending = list(WANTED)
    for index in range(max_scan):
        if not pending:
            break
        frame = camera.frame(index)
        for entry in pending:
            if entry[1](frame):
                picked.append((entry[0], frame))
                pending.remove(entry)
                break
    order = {name: i for i, (name, _) in enumerate(WANTED)}
    return sorted(picked, key=lambda item: order[item[0]])


def overlay(frame: SynthFrame, alpha: float = 0.35) -> np.ndarray:
    """RGB image with each class mask tinted and outlined in its colour, harmless marks outlined in white."""
    rgb = cv2.cvtColor(frame.image, cv2.COLOR_GRAY2RGB)
    tinted = rgb.astype(np.float32)
    for class_id, mask in zip(CLASS_IDS, frame.masks, strict=True):
        colour = np.array(CLASS_COLOURS_RGB[class_id], dtype=np.float32)
        inside = mask.astype(bool)
        tinted[inside] = (1 - alpha) * tinted[inside] + alpha * colour
    out = tinted.astype(np.uint8)
    for class_id, mask in zip(CLASS_IDS, frame.masks, strict=True):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, CLASS_COLOURS_RGB[class_id], 1)
    contours, _ = cv2.findContours(
        frame.harmless.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(out, contours, -1, HARMLESS_COLOUR_RGB, 1)
    return out


def _label(text_parts: Sequence[tuple[str, tuple[int, int, int]]], width: int) -> np.ndarray:
    strip = np.full((_LABEL_HEIGHT, width, 3), 24, dtype=np.uint8)
    x = 8
    for text, colour in text_parts:
        cv2.putText(strip, text, (x, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        x += cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] + 12
    return strip


def render_sheet(examples: Sequence[tuple[str, SynthFrame]]) -> np.ndarray:
    """RGB contact sheet: per example a label line, then the raw frame and its overlay side by side."""
    if not examples:
        raise ValueError("no examples to show")
    rows = []
    for title, frame in examples:
        raw = cv2.cvtColor(frame.image, cv2.COLOR_GRAY2RGB)
        pair = np.hstack([raw, np.full((raw.shape[0], 8, 3), 24, np.uint8), overlay(frame)])
        pair = cv2.resize(pair, None, fx=_SCALE, fy=_SCALE, interpolation=cv2.INTER_AREA)
        parts = [(f"{frame.image_id}  {title}  [{frame.style}]", (230, 230, 230))]
        parts += [(f"{c} {CLASS_NAMES[c]}", CLASS_COLOURS_RGB[c]) for c in frame.classes] or [
            ("no defect", (160, 160, 160))
        ]
        if frame.harmless.any():
            parts.append(("harmless marks (white outline)", HARMLESS_COLOUR_RGB))
        if frame.edge is not None:
            parts.append(("strip edge", (160, 160, 160)))
        rows.append(_label(parts, pair.shape[1]))
        rows.append(pair)
    legend = [("raw (left) and masks (right):", (230, 230, 230))]
    legend += [(f"{c} {CLASS_NAMES[c]}", CLASS_COLOURS_RGB[c]) for c in CLASS_IDS]
    return np.vstack([_label(legend, rows[0].shape[1]), *rows])


def write_contact_sheet(path: Path = CONTACT_SHEET, seed: int = 0) -> Path:
    sheet = render_sheet(pick_examples(SyntheticCamera(seed)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="synthetic contact sheet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=CONTACT_SHEET)
    args = parser.parse_args(argv)
    try:
        path = write_contact_sheet(args.out, args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    print(f"wrote {path}")
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
