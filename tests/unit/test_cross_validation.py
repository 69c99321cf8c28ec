"""Mixed-dataset training, the cross-validation split and the cross-validated `steel train all --cv`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_datasets import TINY_CLS, TINY_NET, make_kaggle, make_pairs

from steelcore import exit_codes
from steelcore.cli import main
from training.cross_validation import assign_folds, nested_predictions
from training.loader import TrainingSamples
from training.mixed_data import DataSpec, open_mixed
from training.robustness import PERTURBATIONS, robustness_summary


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _kaggle(root: Path, n: int, seed: int, prefix: str) -> Path:
    make_kaggle(root, [f"{prefix}{i:07x}.png" for i in range(n)], seed=seed)
    return root


def test_data_spec_parses_factor_and_keeps_plain_folders(tmp_path: Path) -> None:
    assert DataSpec.parse("data/real:6") == DataSpec("data/real", 6.0)
    assert DataSpec.parse("data/synth:0.25") == DataSpec("data/synth", 0.25)
    assert DataSpec.parse("data/real") == DataSpec("data/real", 1.0)
    odd = tmp_path / "run:2"
    odd.mkdir()
    assert DataSpec.parse(str(odd)) == DataSpec(str(odd), 1.0)  # a real folder named like a spec
    with pytest.raises(ValueError, match="> 0"):
        DataSpec("x", 0.0)


def test_mixed_dataset_draws_each_part_by_its_factor(tmp_path: Path) -> None:
    big = _kaggle(tmp_path / "big", 40, 0, "b")
    small = _kaggle(tmp_path / "small", 5, 1, "s")
    mixed = open_mixed([f"{big}:0.25", f"{small}:4"], "all")
    assert len(mixed) == 45 and mixed.layout == "kaggle"
    image, masks, image_id = mixed[42]
    assert image_id.startswith("s") and masks.shape == (4, *image.shape)
    samples = TrainingSamples(mixed, "segmenter", None, seed=0)
    # 40 * 0.25 + 5 * 4 = 30 draws per epoch, two thirds of them from the 5 small-set frames.
    assert len(samples) == 30
    from_small = sum(
        mixed.part_of(int(i)) == 1 for e in range(20) for i in (samples.set_epoch(e), samples.order)[1]
    )
    assert 0.55 < from_small / (20 * 30) < 0.78
    # A plain single dataset keeps the plain permutation (every image once per epoch).
    single = TrainingSamples(open_mixed([str(big)], "all"), "segmenter", None, seed=0)
    assert sorted(single.order.tolist()) == list(range(40))


def test_mixed_datasets_must_label_the_same_classes(tmp_path: Path) -> None:
    kaggle = _kaggle(tmp_path / "k", 4, 0, "k")
    pairs = tmp_path / "p"
    make_pairs(pairs, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="same classes"):
        open_mixed([str(kaggle), str(pairs)], "all")
    with pytest.raises(ValueError, match="nowhere"):
        open_mixed([str(kaggle), str(tmp_path / "nowhere")], "all")


def test_folds_hold_every_frame_once_and_spread_rare_classes() -> None:
    rng = np.random.default_rng(0)
    ids = [f"{i:09x}.jpg" for i in range(65)]
    presence = rng.random((65, 4)) < [0.08, 0.03, 0.5, 0.37]
    folds = assign_folds(ids, presence, 5, seed=0)
    assert folds.shape == (65,) and set(folds.tolist()) == set(range(5))
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    for c in range(4):  # a class with n >= 5 frames is in every fold; fewer: in n different folds
        n = int(presence[:, c].sum())
        assert len(set(folds[presence[:, c]].tolist())) == min(n, 5)
    # Stable: the same ids in another order get the same folds.
    order = rng.permutation(65)
    again = assign_folds([ids[i] for i in order], presence[order], 5, seed=0)
    assert (again == folds[order]).all()
    with pytest.raises(ValueError, match="unique"):
        assign_folds(["a", "a", "b"], presence[:3], 2)


def test_nested_tuning_never_sees_the_fold_it_scores() -> None:
    assignment = np.array([0, 0, 1, 1, 2, 2])
    seen: list[list[int]] = []

    class Cache:
        def __init__(self, idx: list[int]) -> None:
            self.idx = idx
            self.seg = idx
            self.truth = idx
            self.cls = None

    import training.probability_cache as probability_cache

    original = probability_cache.subset_cache
    probability_cache.subset_cache = lambda cache, indices: Cache(indices)  # type: ignore[assignment]
    try:
        _, per_frame = nested_predictions(
            Cache(list(range(6))), assignment, lambda c: (seen.append(c.idx) or tuple(c.idx), None)
        )
    finally:
        probability_cache.subset_cache = original
    for frame, params in per_frame.items():
        assert frame not in params  # the params of a frame were tuned without it
    assert [sorted(s) for s in seen] == [[2, 3, 4, 5], [0, 1, 4, 5], [0, 1, 2, 3]]


def test_robustness_perturbations_and_summary() -> None:
    image = np.full((8, 8), 100, np.uint8)
    assert (PERTURBATIONS["brighter_20"](image) == 120).all()
    assert (PERTURBATIONS["darker_20"](image) == 80).all()
    assert PERTURBATIONS["jpeg_70"](image).shape == image.shape
    summary = robustness_summary(0.80, {"a": 0.79, "b": 0.75})
    assert (
        summary["perturbations"]["a"]["within_target"] and not summary["perturbations"]["b"]["within_target"]
    )


def test_train_all_cross_validated_writes_a_bundle_and_an_honest_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.model_bundle import load_bundle
    from training.networks import presets

    monkeypatch.setitem(presets.PRESETS, "tiny", {"segmenter": TINY_NET, "classifier": TINY_CLS})
    real = _kaggle(tmp_path / "real", 10, 0, "r")
    synth = _kaggle(tmp_path / "synth", 6, 1, "s")
    bundle = tmp_path / "bundle"
    argv = [
        "train", "all", "--data", f"{synth}:0.5", "--data", f"{real}:2", "--cv", str(real), "--folds", "2",
        "--out", str(bundle), "--preset", "tiny", "--epochs", "1", "--batch-size", "4", "--crop", "32x64",
        "--threads", "1", "--no-progress", "--name", "cv-test",
    ]  # fmt: skip
    assert main(argv) == exit_codes.OK
    for fold in (0, 1):
        for task in ("classifier", "segmenter"):
            assert (bundle / "runs" / f"fold-{fold}" / task / "model.pt").is_file()
    loaded = load_bundle(bundle)
    assert loaded.name == "cv-test" and loaded.classifier is not None
    report = json.loads((bundle / "metrics.json").read_text())
    assert report["images"] == 10 and report["data"]["split"] == "2-fold cross-validation"
    folds = report["cross_validation"]["fold_of_image"]
    assert sorted(folds) == sorted(p.name for p in (real / "train_images").iterdir())
    assert set(folds.values()) == {0, 1}
    assert len(report["cross_validation"]["postprocess_per_fold"]) == 2
    summary = report["summary"]
    assert 0 <= summary["mean_dice"] <= 1 and 0 <= summary["empty_baseline_dice"] <= 1
    assert set(report["robustness"]["perturbations"]) == set(PERTURBATIONS)
    prov = loaded.meta["provenance"]
    assert prov["cross_validation"]["folds"] == 2 and len(prov["data"]) == 2
    # The held-out fold of each fold run is the frames of that fold: no frame trained and scored alike.
    for fold in (0, 1):
        config = json.loads((bundle / "runs" / f"fold-{fold}" / "segmenter" / "config.json").read_text())
        assert config["val_images"] == sum(1 for f in folds.values() if f == fold)
        assert config["hyperparameters"]["keep"] == "last"


def test_cv_folder_must_be_one_of_the_data(tmp_path: Path) -> None:
    real = _kaggle(tmp_path / "real", 6, 0, "r")
    argv = ["train", "all", "--data", str(real), "--cv", str(tmp_path), "--out", str(tmp_path / "b")]
    assert main(argv) == exit_codes.BAD_INPUT


def _train_argv(data: Path, out: Path) -> list[str]:
    return [
        "train", "all", "--data", str(data), "--cv", str(data), "--folds", "2", "--out", str(out),
        "--preset", "tiny", "--epochs", "1", "--batch-size", "4", "--crop", "32x64", "--threads", "1",
        "--no-progress",
    ]  # fmt: skip


@pytest.mark.parametrize("fault", ["missing image", "malformed rle", "mask outside frame", "other size"])
def test_bad_dataset_stops_training_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    import cv2

    from training.networks import presets

    monkeypatch.setitem(presets.PRESETS, "tiny", {"segmenter": TINY_NET, "classifier": TINY_CLS})
    data = _kaggle(tmp_path / "real", 6, 0, "r")
    csv = data / "train.csv"
    lines = csv.read_text().splitlines()
    victim = lines[1].split(",")[0]
    if fault == "missing image":
        (data / "train_images" / victim).unlink()
        expected = ["train.csv:2", victim]
    elif fault == "malformed rle":
        lines.append("r0000004.png,2,5 x 7")
        csv.write_text("\n".join(lines) + "\n")
        expected = [f"train.csv:{len(lines)}", "r0000004.png"]
    elif fault == "mask outside frame":
        lines.append(f"r0000004.png,2,{64 * 160 - 2} 10")
        csv.write_text("\n".join(lines) + "\n")
        expected = [f"train.csv:{len(lines)}", "r0000004.png"]
    else:
        cv2.imwrite(str(data / "train_images" / victim), np.zeros((64, 150), np.uint8))
        expected = [victim, "150x64"]
    out = tmp_path / "bundle"
    assert main(_train_argv(data, out)) == exit_codes.BAD_INPUT
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert not out.exists()  # nothing half-written
    plain = ["train", "segmenter", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny"]
    assert main(plain) == exit_codes.BAD_INPUT
    assert not (tmp_path / "run" / "model.pt").exists()


def test_eval_robustness_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.networks import presets

    monkeypatch.setitem(presets.PRESETS, "tiny", {"segmenter": TINY_NET, "classifier": TINY_CLS})
    data = _kaggle(tmp_path / "real", 6, 0, "r")
    bundle = tmp_path / "bundle"
    assert main([*_train_argv(data, bundle)]) == exit_codes.OK
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", str(bundle), "--data", str(data), "--split", "all", "--json", str(out)]
    assert main([*argv, "--robustness", "--no-progress"]) == exit_codes.OK
    report = json.loads(out.read_text())
    rows = report["robustness"]["perturbations"]
    assert set(rows) == {"brighter_20", "darker_20", "jpeg_70"}
    base = report["summary"]["mean_dice"]
    assert report["robustness"]["base_mean_dice"] == base
    for row in rows.values():
        assert row["delta"] == pytest.approx(row["mean_dice"] - base)
        assert row["within_target"] == (base - row["mean_dice"] <= 0.02)
    assert main([*argv, "--no-progress"]) == exit_codes.OK
    assert "robustness" not in json.loads(out.read_text())


def test_a_gate_that_changes_nothing_is_set_high_so_the_cascade_skips_the_class() -> None:
    from training.postprocess_search import GATE_THRESHOLDS, PIXEL_THRESHOLDS, search
    from training.probability_cache import ProbabilityCache

    rng = np.random.default_rng(0)
    n, h, w = 12, 16, 32
    truth = np.zeros((n, 2, h, w), bool)
    seg = np.zeros((n, 2, h, w), np.uint8)
    for i in range(0, n, 2):  # class index 1 present on every other frame and found...
        truth[i, 1, 4:10, 5:20] = True
        seg[i, 1, 4:10, 5:20] = 230
        seg[i + 1, 1, 0:12, 0:30] = 200  # ...and painted on the clean frames between, which the gate clears
    truth[3, 0, 2:6, 2:6] = True  # class index 0: one frame holds it, the segmenter never finds it
    cls = (rng.random((n, 2)) * 0.5).astype(np.float32)
    cls[::2, 1] = 0.99
    cache = ProbabilityCache(1, h * w, list(seg), list(truth), cls)
    params, _ = search(cache)
    assert params.gate_threshold[0] == GATE_THRESHOLDS[-1]  # changes nothing: as high as the grid goes
    assert params.gate_threshold[1] < GATE_THRESHOLDS[-1]
    assert params.pixel_threshold[0] == 0.5 and 0.5 in PIXEL_THRESHOLDS
