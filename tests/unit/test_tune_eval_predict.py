"""tune -> eval -> predict -> models end to end on tiny datasets with tiny random networks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from steelcore import exit_codes
from steelcore.cli import main
from steelcore.paths import SEVERSTAL_SAMPLE_DIR
from steelcore.rle import decode, encode
from training import postprocess_search, probability_cache, zoo
from training.datasets import in_val_split
from training.evaluate import evaluate_bundle
from training.model_bundle import PostprocessParams, load_bundle, save_bundle
from training.networks import build_model
from training.postprocess_search import search
from training.predict import predict_submission
from training.probability_cache import ProbabilityCache
from training.tune import tune_and_save

H, W = 32, 64
TINY = {"widths": [4, 4, 8, 8, 8], "blocks": [1, 1, 1, 1], "input_scale": 1.0}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _net(task: str, num_classes: int) -> dict:
    extra = {"decoder_widths": [8, 8, 4, 4]} if task == "segmenter" else {}
    return {"num_classes": num_classes, **TINY, **extra}


def _segmenter_bundle(path: Path, name: str, class_names: dict[int, str]) -> Path:
    """A bundle of a tiny random segmenter (seed 0) for these classes: no classifier, neutral thresholds."""
    torch.manual_seed(0)
    net = _net("segmenter", len(class_names))
    return save_bundle(
        path,
        name=name,
        description="tiny",
        class_ids=list(class_names),
        class_names=class_names,
        classifier_config=None,
        classifier_state=None,
        segmenter_config=net,
        segmenter_state=build_model("segmenter", net).state_dict(),
        postprocess=PostprocessParams.neutral(len(class_names)),
        provenance={},
    )


def _write_run(path: Path, task: str, class_ids: list[int], seed: int) -> Path:
    torch.manual_seed(seed)
    net = _net(task, len(class_ids))
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps({"task": task, "net": net, "class_ids": class_ids, "seed": seed})
    )
    torch.save(build_model(task, net).state_dict(), path / "model.pt")
    return path


def _frame_with_defect(rng: np.random.Generator, class_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(60, 100, (H, W), dtype=np.uint8)
    masks = np.zeros((4, H, W), dtype=np.uint8)
    if class_index is not None:
        y, x = rng.integers(0, H - 8), rng.integers(0, W - 12)
        masks[class_index, y : y + 8, x : x + 12] = 1
        image[masks[class_index] == 1] = 220
    return image, masks


@pytest.fixture(scope="module")
def kaggle_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Kaggle layout: 6 val + 4 train frames, defects of known classes; one PNG, the rest JPEG."""
    root = tmp_path_factory.mktemp("kaggle")
    (root / "train_images").mkdir()
    rng = np.random.default_rng(0)
    val_names = [n for n in (f"v{i:04d}.jpg" for i in range(2000)) if in_val_split(n)][:6]
    train_names = [n for n in (f"t{i:04d}.jpg" for i in range(50)) if not in_val_split(n)][:4]
    val_names[0] = next(n for n in (f"p{i:04d}.png" for i in range(2000)) if in_val_split(n))
    rows, present = [], {}
    for k, name in enumerate(val_names + train_names):
        class_index = None if k % 5 == 4 else k % 4  # some clean frames
        image, masks = _frame_with_defect(rng, class_index)
        cv2.imwrite(str(root / "train_images" / name), image)
        present[name] = class_index
        if class_index is not None:
            rows.append(f"{name},{class_index + 1},{encode(masks[class_index])}")
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n" + "\n".join(rows) + "\n")
    return {"root": root, "present": present, "val": val_names, "train": train_names}


@pytest.fixture(scope="module")
def tuned_bundle(kaggle_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("runs")
    cls_run = _write_run(tmp / "cls", "classifier", [1, 2, 3, 4], seed=1)
    seg_run = _write_run(tmp / "seg", "segmenter", [1, 2, 3, 4], seed=2)
    return tune_and_save(cls_run, seg_run, kaggle_data["root"], tmp / "bundle", "tiny", progress=False)


def test_tune_writes_loadable_bundle_with_grid_params_and_provenance(
    tuned_bundle: Path, kaggle_data: dict
) -> None:
    bundle = load_bundle(tuned_bundle)
    assert bundle.name == "tiny" and bundle.classifier is not None
    params = bundle.postprocess
    assert all(t in postprocess_search.PIXEL_THRESHOLDS for t in params.pixel_threshold)
    assert all(g in postprocess_search.GATE_THRESHOLDS for g in params.gate_threshold)
    allowed_areas = {round(f * H * W) for f in postprocess_search.MIN_AREA_FRACTIONS}
    assert set(params.min_area) <= allowed_areas
    prov = bundle.meta["provenance"]
    assert prov["data"] == [str(kaggle_data["root"].resolve())]
    assert prov["seed"] == {"classifier": 1, "segmenter": 2}
    assert prov["classifier_run"].endswith("cls") and prov["segmenter_run"].endswith("seg")
    assert prov["tuning"]["images"] == len(kaggle_data["val"])
    assert {"created", "tuning"} <= set(prov)


def test_tune_rejects_run_of_wrong_task_or_classes(kaggle_data: dict, tmp_path: Path) -> None:
    seg_run = _write_run(tmp_path / "seg", "segmenter", [1, 2, 3, 4], seed=0)
    with pytest.raises(ValueError, match="expected a classifier run"):
        tune_and_save(seg_run, seg_run, kaggle_data["root"], tmp_path / "b", progress=False)
    three = _write_run(tmp_path / "seg3", "segmenter", [1, 2, 3], seed=0)
    with pytest.raises(ValueError, match=r"classes \[1, 2, 3\] but the dataset has classes \[1, 2, 3, 4\]"):
        tune_and_save(None, three, kaggle_data["root"], tmp_path / "b", progress=False)


def test_tune_without_classifier_and_with_a_tiny_cache(kaggle_data: dict, tmp_path: Path) -> None:
    seg_run = _write_run(tmp_path / "seg", "segmenter", [1, 2, 3, 4], seed=4)
    out = tune_and_save(None, seg_run, kaggle_data["root"], tmp_path / "b", cache_mb=0.001, progress=False)
    bundle = load_bundle(out)
    assert bundle.classifier is None
    assert bundle.postprocess.gate_threshold == [0.0] * 4
    assert bundle.meta["provenance"]["tuning"]["cache_downscale"] == probability_cache.CACHE_FACTORS[-1]


def test_cache_factor_fits_the_budget() -> None:
    # 2 bytes (uint8 probability + bool truth) x 4 classes x 256 x 1600 = 3,276,800 bytes per frame.
    assert probability_cache.choose_cache_factor(300, 4, (256, 1600), 512) == 2  # 983 MB / 4 = 246 MB
    assert probability_cache.choose_cache_factor(1257, 4, (256, 1600), 512) == 4  # 4.1 GB / 16 = 257 MB
    assert probability_cache.choose_cache_factor(894, 3, (200, 200), 512) == 1  # 215 MB


def test_search_finds_the_settings_that_remove_known_false_positives() -> None:
    # Two 1-class 20x20 frames. Frame 0: a true 5x5 defect predicted at 0.65 plus a 1-pixel speck at 0.95.
    # Frame 1: clean, but a 4x4 false blob at 0.9 which only the classifier (0.1) can reject.
    seg = np.zeros((2, 1, 20, 20), dtype=np.uint8)
    truth = np.zeros((2, 1, 20, 20), dtype=bool)
    truth[0, 0, 2:7, 2:7] = True
    seg[0, 0, 2:7, 2:7] = round(0.65 * 255)
    seg[0, 0, 15, 15] = round(0.95 * 255)
    seg[1, 0, 10:14, 10:14] = round(0.9 * 255)
    cache = ProbabilityCache(1, 400, list(seg), list(truth), np.array([[0.9], [0.1]], dtype=np.float32))
    params, choices = search(cache)
    # Perfect: threshold <= 0.65 keeps the defect, min area in (1, 25] drops the speck, gate in (0.1, 0.9].
    assert params.pixel_threshold[0] <= 0.6
    assert 1 < params.min_area[0] <= 25
    assert 0.1 < params.gate_threshold[0] <= 0.9
    assert choices[0].dice == pytest.approx(1.0)
    # Raw (0.5, no area, no gate): frame 0 Dice 2*25/(26+25), frame 1 Dice 0.
    assert choices[0].raw_dice == pytest.approx((50 / 51 + 0) / 2)


def test_eval_json_has_every_key_and_counts_match_the_data(
    tuned_bundle: Path, kaggle_data: dict, tmp_path: Path
) -> None:
    out, png = tmp_path / "eval.json", tmp_path / "eval.png"
    rc = main(["eval", "--model", str(tuned_bundle), "--data", str(kaggle_data["root"]), "--split", "all",
               "--json", str(out), "--plot", str(png), "--no-progress"])  # fmt: skip
    assert rc == exit_codes.OK
    report = json.loads(out.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = list(kaggle_data["present"])
    assert report["images"] == len(names)
    assert {"model", "data", "postprocess", "summary", "raw", "postprocessed", "auc_score"} <= set(report)
    for view in ("raw", "postprocessed"):
        r = report[view]
        assert set(r) == {
            "images",
            "mean_dice",
            "dice_per_class",
            "pixel",
            "image",
            "empty_baseline_dice",
            "false_mask_rate",
            "false_mask_rate_per_class",
            "frame",
        }
        pixel_keys = {
            "iou",
            "precision",
            "recall",
            "f1",
            "background_iou",
            "miou_with_background",
            "miou_classes",
        }
        assert set(r["pixel"]) == pixel_keys
        assert set(r["image"]) == {"precision", "recall", "f1", "support", "auc"}
        for metric in ("iou", "precision", "recall", "f1"):
            assert set(r["pixel"][metric]) == {"1", "2", "3", "4"}
        expected_support = {
            str(c + 1): sum(v == c for v in kaggle_data["present"].values()) for c in range(4)
        }
        assert r["image"]["support"] == expected_support
        assert 0.0 <= r["mean_dice"] <= 1.0


def test_eval_on_pairs_dataset_without_classifier_and_class_mismatch(
    tmp_path: Path, tuned_bundle: Path
) -> None:
    root = tmp_path / "neu"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("0 background\n1 inclusion\n2 patches\n3 scratches\n")
    rng = np.random.default_rng(3)
    for i in range(3):
        labels = np.zeros((24, 24), dtype=np.uint8)
        labels[4:10, 4:12] = i + 1
        cv2.imwrite(str(root / "images" / f"{i:06d}.jpg"), rng.integers(0, 255, (24, 24), dtype=np.uint8))
        cv2.imwrite(str(root / "masks" / f"{i:06d}.png"), labels)
    (root / "train.txt").write_text("000000\n")
    (root / "val.txt").write_text("000001\n000002\n")
    bundle = _segmenter_bundle(tmp_path / "neu_bundle", "neu", {1: "inclusion", 2: "patches", 3: "scratches"})
    report = evaluate_bundle(bundle, root, "val", tmp_path / "neu.json", progress=False)
    assert report["images"] == 2 and report["auc_score"] == "max pixel probability"
    assert report["summary"]["miou"] is not None
    with pytest.raises(ValueError, match=r"predicts classes \[1 pitting.*has classes \[1 inclusion"):
        evaluate_bundle(tuned_bundle, root, "val", progress=False)


def test_predict_writes_four_rows_per_image_that_decode(tuned_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(5)
    shapes = {"a.jpg": (H, W), "b.png": (H, W), "c.jpeg": (40, 48)}  # c has another size
    for name, shape in shapes.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 255, shape, dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "submission.csv"
    predict_submission(folder, out, tuned_bundle, batch_size=2, progress=False)
    with out.open(newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["ImageId", "ClassId", "EncodedPixels"]
        rows = list(reader)
    assert len(rows) == 4 * len(shapes)
    for name, shape in shapes.items():
        mine = [r for r in rows if r[0] == name]
        assert [int(r[1]) for r in mine] == [1, 2, 3, 4]
        for _, _, encoded in mine:
            assert decode(encoded, shape).shape == shape


def test_predict_unreadable_image_is_bad_input_and_writes_nothing(
    tuned_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), np.zeros((H, W), np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "sub.csv"
    rc = main(
        ["predict", "--images", str(folder), "--out", str(out), "--model", str(tuned_bundle), "--no-progress"]
    )
    assert rc == exit_codes.BAD_INPUT
    err = capsys.readouterr().err
    assert "2 of 3 images are unreadable" in err  # every bad file named in one run
    assert "broken.jpg" in err and "empty.png" in err and "good.png" not in err
    assert not out.exists() and list(tmp_path.glob(".sub.csv.*")) == []


def test_models_lists_bundle_with_metrics(
    tuned_bundle: Path, kaggle_data: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluate_bundle(tuned_bundle, kaggle_data["root"], "val", tuned_bundle / "metrics.json", progress=False)
    monkeypatch.setattr("training.model_bundle.models_dir", lambda: tuned_bundle.parent)
    (tuned_bundle.parent / "broken").mkdir()
    (tuned_bundle.parent / "broken" / "model.json").write_text("{not json")
    entries = {e["name"]: e for e in zoo.list_models()}
    assert entries["tiny"]["classes"] == {"1": "pitting", "2": "inclusion", "3": "scratches", "4": "patches"}
    assert entries["tiny"]["metrics"]["images"] == len(kaggle_data["val"])
    assert "error" in entries["broken"]
    capsys.readouterr()
    assert main(["models", "--json"]) == exit_codes.BAD_INPUT
    assert {e["name"] for e in json.loads(capsys.readouterr().out)} == {"tiny", "broken"}


@pytest.mark.skipif(not SEVERSTAL_SAMPLE_DIR.is_dir(), reason="shared Severstal sample not present")
def test_eval_reads_the_real_severstal_sample(tmp_path: Path) -> None:
    # 4 real 256x1600 frames (.png and .jpg); 000789191.png has no row in train.csv, i.e. it is clean.
    bundle = _segmenter_bundle(
        tmp_path / "b", "b", {1: "pitting", 2: "inclusion", 3: "scratches", 4: "patches"}
    )
    rows = [line.split(",")[:2] for line in (SEVERSTAL_SAMPLE_DIR / "train.csv").read_text().splitlines()[1:]]
    expected = {str(c): sum(int(cid) == c for _, cid in rows) for c in (1, 2, 3, 4)}
    report = evaluate_bundle(bundle, SEVERSTAL_SAMPLE_DIR, "all", progress=False)
    assert report["images"] == 4
    assert report["postprocessed"]["image"]["support"] == expected
