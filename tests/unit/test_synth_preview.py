"""The contact sheet shows the frames it names, with masks tinted in their class colours."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from producers.synth_preview import WANTED, overlay, pick_examples, render_sheet, write_contact_sheet
from producers.synthetic_camera import SyntheticCamera, SynthFrame
from steelcore.severstal import CLASS_COLOURS_RGB, FRAME_SHAPE, NUM_CLASSES


def test_overlay_tints_only_mask_pixels_in_the_class_colour() -> None:
    masks = np.zeros((NUM_CLASSES, *FRAME_SHAPE), np.uint8)
    masks[3, 100:150, 400:600] = 1
    frame = SynthFrame(
        0, "t", np.full(FRAME_SHAPE, 100, np.uint8), masks, np.zeros(FRAME_SHAPE, bool), None, "matte"
    )
    rgb = overlay(frame)
    assert rgb.shape == (*FRAME_SHAPE, 3)
    assert (rgb[0:90] == 100).all() and (rgb[:, 0:390] == 100).all()  # far from the mask: untouched
    inside = rgb[110:140, 420:580].reshape(-1, 3).astype(int)
    # The tint moves the grey towards class 4's colour in every channel.
    direction = np.sign(np.array(CLASS_COLOURS_RGB[4]) - 100)
    assert (np.sign(inside - 100) == direction).all()


def test_examples_match_what_they_are_labelled() -> None:
    examples = pick_examples(SyntheticCamera(seed=0), max_scan=300)
    predicates = dict(WANTED)
    assert len(examples) >= 6
    for name, frame in examples:
        assert predicates[name](frame), name
    assert len({frame.index for _, frame in examples}) == len(examples)


def test_sheet_is_written_as_png(tmp_path: Path) -> None:
    path = write_contact_sheet(tmp_path / "sheet.png", seed=0)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] > FRAME_SHAPE[1]
    sheet = render_sheet(pick_examples(SyntheticCamera(seed=0), max_scan=300))
    assert sheet.shape[2] == 3
