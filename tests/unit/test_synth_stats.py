"""The synthetic-vs-real report counts what it claims to count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from producers.defect_shapes import default_library
from producers.synth_stats import (
    compare,
    real_statistics,
    render_markdown,
    synthetic_statistics,
    write_report,
)
from producers.synthetic_camera import SynthFrame
from steelcore.severstal import FRAME_SHAPE, NUM_CLASSES


def _frame(index: int, boxes: dict[int, list[tuple[int, int, int, int]]]) -> SynthFrame:
    """A frame whose class masks are the given (x0, y0, x1, y1) rectangles."""
    masks = np.zeros((NUM_CLASSES, *FRAME_SHAPE), np.uint8)
    for class_id, rects in boxes.items():
        for x0, y0, x1, y1 in rects:
            masks[class_id - 1, y0:y1, x0:x1] = 1
    return SynthFrame(
        index=index,
        image_id=f"t{index}",
        image=np.full(FRAME_SHAPE, 100, np.uint8),
        masks=masks,
        harmless=np.zeros(FRAME_SHAPE, bool),
        edge=None,
        style="matte",
    )


def test_synthetic_statistics_of_known_frames() -> None:
    frames = [
        _frame(0, {}),
        _frame(1, {3: [(100, 0, 110, 256), (500, 0, 520, 100)]}),  # two components, 2560 + 2000 px
        _frame(2, {1: [(0, 0, 10, 10)], 3: [(1000, 50, 1010, 150)]}),  # 100 px and 1000 px
        _frame(3, {}),
    ]
    stats = synthetic_statistics(frames)
    assert stats["frames"] == 4
    assert stats["clean_share"] == 0.5
    assert stats["class_share"] == {1: 0.25, 2: 0.0, 3: 0.5, 4: 0.0}
    assert stats["pair_share"]["1&3"] == 0.25
    assert stats["combination_share"] == {"clean": 0.5, "3": 0.25, "1+3": 0.25}
    assert stats["area"][3]["median"] == pytest.approx((4560 + 1000) / 2)
    assert stats["components"][3]["q3"] >= 1.5 and stats["components"][1]["median"] == 1
    assert stats["centroid_x"][1]["median"] == pytest.approx(4.5)
    assert stats["area"][2] == {"n": 0}


def test_real_statistics_come_from_the_library(tmp_path: Path) -> None:
    library = default_library()
    real = real_statistics(library, images_dir=tmp_path)  # no images there: image part empty
    assert real["frames"] == int(library.combo_counts.sum())
    assert real["class_share"] == pytest.approx(library.real_frame_frequencies())
    assert real["area"][3]["n"] == library.groups_of(3).size
    assert real["image"] == {} and real["image_frames"] == 0


def test_compare_writes_markdown_and_json(tmp_path: Path) -> None:
    report = compare(n=6, seed=1)
    md_path, json_path = write_report(report, tmp_path / "report")
    text = md_path.read_text()
    assert "| measure | real | synthetic |" in text
    assert "frames with class 4 (patches)" in text
    assert json_path.read_text().startswith("{")
    assert render_markdown(report) == text
    with pytest.raises(ValueError):
        compare(n=0)
