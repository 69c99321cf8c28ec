"""`steel train all --cv --pseudo-label DIR --teacher BUNDLE`: unlabelled frames labelled by a teacher
that never saw the fold they help to score."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_datasets import TINY_CLS, TINY_NET, make_kaggle

from steelcore import exit_codes
from steelcore.cli import main
from steelcore.postprocess import apply_postprocess
from steelcore.rle import decode_stack
from training.inference import predict_probs

SHAPE = (64, 160)  # the tiny datasets' frame size


@pytest.fixture(autouse=True)
def _tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.networks import presets

    torch.set_num_threads(1)
    monkeypatch.setitem(presets.PRESETS, "tiny", {"segmenter": TINY_NET, "classifier": TINY_CLS})


def _argv(real: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "all", "--data", str(real), "--cv", str(real), "--folds", "2", "--out", str(out),
        "--preset", "tiny", "--epochs", "1", "--batch-size", "4", "--crop", "32x64", "--threads", "1",
        "--no-progress", "--seed", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the labelled frames, a cross-validated bundle trained on them: the teacher)."""
    from training.networks import presets

    root = tmp_path_factory.mktemp("pseudo")
    real = root / "real"
    make_kaggle(real, [f"r{i:07x}.png" for i in range(8)], shape=SHAPE, seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(presets.PRESETS, "tiny", {"segmenter": TINY_NET, "classifier": TINY_CLS})
        assert main(_argv(real, root / "teacher", "--name", "teacher")) == exit_codes.OK
    return real, root / "teacher"


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("unlabelled")
    rng = np.random.default_rng(7)
    for k in range(3):
        cv2.imwrite(str(folder / f"u{k}.png"), rng.integers(0, 256, SHAPE, dtype=np.uint8))
    return folder


def test_fold_k_frames_are_labelled_by_the_teachers_fold_k_pair(
    teacher: tuple[Path, Path], unlabelled: Path
) -> None:
    from steelcore.severstal import CLASS_IDS, CLASS_NAMES
    from training.model_bundle import PostprocessParams
    from training.pseudo_labels import fold_teacher, label_frames

    _, bundle_dir = teacher
    report = json.loads((bundle_dir / "metrics.json").read_text())
    for fold in (0, 1):
        bundle = fold_teacher(bundle_dir, fold, list(CLASS_IDS), dict(CLASS_NAMES), "cpu")
        per_fold = report["cross_validation"]["postprocess_per_fold"]
        assert bundle.postprocess == PostprocessParams.from_json(per_fold[fold])
        labelled = label_frames(bundle, unlabelled, SHAPE)
        assert labelled.image_ids == ["u0.png", "u1.png", "u2.png"] and labelled.layout == "pseudo-labelled"
        frames = np.stack([cv2.imread(str(unlabelled / i), cv2.IMREAD_GRAYSCALE) for i in labelled.image_ids])
        cls, seg = predict_probs(bundle, frames)
        expected = apply_postprocess(cls, seg, bundle.postprocess)
        for k, image_id in enumerate(labelled.image_ids):
            image, masks, sample_id = labelled[k]
            assert sample_id == image_id and image.shape == SHAPE
            np.testing.assert_array_equal(masks, expected[k])
            np.testing.assert_array_equal(decode_stack(labelled.labels[image_id], shape=SHAPE), expected[k])
        np.testing.assert_array_equal(labelled.class_presence(), expected.any(axis=(2, 3)))


def test_a_frame_of_another_size_is_refused_by_name(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    from steelcore.severstal import CLASS_IDS, CLASS_NAMES
    from training.pseudo_labels import fold_teacher, label_frames

    cv2.imwrite(str(tmp_path / "thumb.png"), np.zeros((32, 32), np.uint8))
    bundle = fold_teacher(teacher[1], 0, list(CLASS_IDS), dict(CLASS_NAMES), "cpu")
    with pytest.raises(ValueError, match=r"thumb\.png"):
        label_frames(bundle, tmp_path, SHAPE)


def test_student_trains_on_pseudo_labelled_frames(
    teacher: tuple[Path, Path], unlabelled: Path, tmp_path: Path
) -> None:
    real, bundle_dir = teacher
    out = tmp_path / "student"
    argv = _argv(real, out, "--pseudo-label", f"{unlabelled}:2", "--teacher", str(bundle_dir), "--cv-only")
    assert main(argv) == exit_codes.OK
    report = json.loads((out / "metrics.json").read_text())
    assert report["recipe"]["pseudo_label"] == f"{unlabelled}:2"
    assert report["recipe"]["teacher"] == str(bundle_dir)
    teacher_folds = json.loads((bundle_dir / "metrics.json").read_text())["cross_validation"]["fold_of_image"]
    assert report["cross_validation"]["fold_of_image"] == teacher_folds
    for fold in (0, 1):
        config = json.loads((out / "runs" / f"fold-{fold}" / "segmenter" / "config.json").read_text())
        held_out = sum(1 for f in teacher_folds.values() if f == fold)
        # The fold's labelled training frames plus the 3 pseudo-labelled ones; none held out.
        assert config["train_images"] == len(teacher_folds) - held_out + 3
        assert config["val_images"] == held_out


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--pseudo-label", "{u}"), "needs --teacher"),
        (("--teacher", "{t}"), "is for --pseudo-label"),
        (("--pseudo-label", "{u}", "--teacher", "{t}", "--folds", "3"), "other frames or folds"),
        (("--pseudo-label", "{u}", "--teacher", "{r}"), "no metrics.json"),
    ],
)
def test_bad_teacher_options_stop_before_training(
    teacher: tuple[Path, Path],
    unlabelled: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    real, bundle_dir = teacher
    filled = [e.format(u=unlabelled, t=bundle_dir, r=real) for e in extra]
    out = tmp_path / "student"
    assert main(_argv(real, out, *filled)) == exit_codes.BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_pseudo_labels_need_cross_validation(
    teacher: tuple[Path, Path], unlabelled: Path, tmp_path: Path
) -> None:
    real, bundle_dir = teacher
    argv = [
        "train", "all", "--data", str(real), "--out", str(tmp_path / "b"), "--pseudo-label", str(unlabelled),
        "--teacher", str(bundle_dir), "--preset", "tiny", "--epochs", "1", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == exit_codes.BAD_INPUT
    assert not (tmp_path / "b").exists()
