"""`steel synth` writes a Kaggle-format dataset whose labels reproduce the camera's masks exactly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from producers import synth_dataset
from producers.synthetic_camera import SyntheticCamera
from steelcore import exit_codes
from steelcore.kaggle_csv import read_labels
from steelcore.rle import decode_stack
from steelcore.severstal import FRAME_SHAPE, NUM_CLASSES

cv2.setNumThreads(1)


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    synth_dataset.add_arguments(parser)
    return synth_dataset.run(parser.parse_args([*argv, "--no-progress"]))


def test_written_dataset_reproduces_every_mask(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    n, seed = 8, 3
    # Frequent classes so that the frames hold several classes and some are still clean.
    assert (
        _run("--out", str(out), "--n", str(n), "--seed", str(seed), "--class-frequencies", "0.3,0.3,0.5,0.3")
        == 0
    )
    labels = read_labels(out / "train.csv")
    camera = SyntheticCamera(seed, class_frequencies=(0.3, 0.3, 0.5, 0.3))
    images = sorted(p.name for p in (out / "train_images").iterdir())
    assert len(images) == n
    seen_clean = seen_defect = 0
    for index in range(n):
        frame = camera.frame(index)
        assert frame.file_name in images
        rles = labels.get(frame.file_name, [""] * NUM_CLASSES)
        assert np.array_equal(decode_stack(rles, FRAME_SHAPE), frame.masks), frame.file_name
        # Rows only for present classes, as Kaggle.
        assert [bool(r) for r in rles] == [bool(m.any()) for m in frame.masks]
        pixels = cv2.imread(str(out / "train_images" / frame.file_name), cv2.IMREAD_GRAYSCALE)
        assert pixels.shape == FRAME_SHAPE
        assert np.abs(pixels.astype(int) - frame.image.astype(int)).mean() < 4.0  # JPEG, not another picture
        seen_clean += not frame.classes
        seen_defect += bool(frame.classes)
    assert seen_clean and seen_defect
    summary = json.loads((out / "synth.json").read_text())
    assert summary["frames"] == n and summary["clean_frames"] == seen_clean


def test_parallel_jobs_write_the_same_labels(tmp_path: Path) -> None:
    assert _run("--out", str(tmp_path / "one"), "--n", "6", "--seed", "4") == 0
    assert _run("--out", str(tmp_path / "two"), "--n", "6", "--seed", "4", "--jobs", "2") == 0
    assert (tmp_path / "one" / "train.csv").read_text() == (tmp_path / "two" / "train.csv").read_text()


def test_start_index_continues_the_sequence(tmp_path: Path) -> None:
    assert _run("--out", str(tmp_path / "ds"), "--n", "2", "--seed", "5", "--start-index", "10") == 0
    names = sorted(p.name for p in (tmp_path / "ds" / "train_images").iterdir())
    camera = SyntheticCamera(5)
    assert names == sorted([camera.frame(10).file_name, camera.frame(11).file_name])


def test_existing_dataset_is_not_mixed_into(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert _run("--out", str(out), "--n", "3", "--seed", "1") == 0
    assert _run("--out", str(out), "--n", "2", "--seed", "2") == exit_codes.BAD_INPUT
    assert "--overwrite" in capsys.readouterr().err
    assert _run("--out", str(out), "--n", "2", "--seed", "2", "--overwrite") == 0
    # The seed-1 frames are gone: they would otherwise read as defect-free frames.
    names = {p.name for p in (out / "train_images").iterdir()}
    assert names == {SyntheticCamera(2).frame(i).file_name for i in range(2)}


@pytest.mark.parametrize(
    "argv",
    [
        ("--n", "0"),
        ("--n", "2", "--jobs", "0"),
        ("--n", "2", "--seed", "-3"),
        ("--n", "2", "--class-frequencies", "0.1,0.1,0.1,2"),
        ("--n", "2", "--edge-probability", "1.5"),
        ("--n", "2", "--start-index", "-1"),
    ],
)
def test_bad_arguments_are_bad_input(tmp_path: Path, argv: tuple[str, ...]) -> None:
    assert _run("--out", str(tmp_path / "ds"), *argv) == exit_codes.BAD_INPUT
    assert not (tmp_path / "ds" / "train.csv").exists()


def test_malformed_class_frequencies_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        _run("--out", str(tmp_path), "--n", "2", "--class-frequencies", "0.1,0.2")
    assert exc.value.code == exit_codes.USAGE
