"""training.train, trainer, train_session: run files, exact --resume, seeded determinism, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_datasets import TINY_CLS, TINY_NET, make_kaggle, make_pairs

from steelcore import exit_codes
from steelcore.cli import main
from training import run_config, train_session
from training.datasets import in_val_split, open_dataset
from training.run_config import TrainConfig
from training.trainer import train_run

# One epoch of the "tiny" preset (each test shrinks it) on one thread, without a progress bar.
TINY_RUN = ["--preset", "tiny", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train + 2 val frames of 64x160 in the Kaggle layout."""
    root = tmp_path_factory.mktemp("kaggle")
    names = [f"{i:09x}.png" for i in range(200)]
    train_ids = [n for n in names if not in_val_split(n)][:8]
    val_ids = [n for n in names if in_val_split(n)][:2]
    make_kaggle(root, train_ids + val_ids)
    return root


def _cfg(data: Path, **overrides: object) -> TrainConfig:
    base = {
        "task": "segmenter",
        "data": str(data),
        "epochs": 1,
        "batch_size": 4,
        "crop": (32, 64),
        "net": TINY_NET,
        "threads": 1,
        "workers": 0,
        "seed": 3,
    }
    return TrainConfig(**(base | overrides))


def _weights(run: Path, name: str = "checkpoint.pt") -> dict[str, torch.Tensor]:
    state = torch.load(run / name, map_location="cpu", weights_only=False)
    return state["model"] if name == "checkpoint.pt" else state


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_one_epoch_writes_every_run_file(kaggle_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    metrics = train_run(_cfg(kaggle_root), run, progress=False)
    for name in ("config.json", "checkpoint.pt", "model.pt", "metrics.json", "curves.png"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "segmenter"
    assert config["class_ids"] == [1, 2, 3, 4] and config["net"]["num_classes"] == 4
    assert config["class_names"]["3"] == "scratches"
    assert config["data"] == [str(kaggle_root.resolve())]
    assert config["seed"] == 3 and config["hyperparameters"]["crop"] == [32, 64]
    assert (config["train_images"], config["val_images"]) == (8, 2)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == metrics
    (row,) = metrics["epochs"]
    assert row["epoch"] == 1 and metrics["best_epoch"] == 1
    assert metrics["score_name"] == "val_mean_dice"
    assert 0.0 <= row["val_mean_dice"] <= 1.0 and set(row["val_dice_per_class"]) == {"1", "2", "3", "4"}
    for key in ("train_loss", "val_loss", "seconds", "train_samples_per_s"):
        assert row[key] > 0, key
    # The best epoch's weights load into the network described by config.json.
    from training.networks import build_model

    build_model("segmenter", config["net"]).load_state_dict(torch.load(run / "model.pt", weights_only=True))


def test_resume_continues_exactly(kaggle_root: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train_run(_cfg(kaggle_root, epochs=2), straight, progress=False)

    class Crash(Exception):
        pass

    def crash_after_first(epoch: int) -> None:
        if epoch == 1:
            raise Crash

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Crash):
        train_run(_cfg(kaggle_root, epochs=2), interrupted, progress=False, on_epoch_end=crash_after_first)
    assert len(json.loads((interrupted / "metrics.json").read_text())["epochs"]) == 1
    with pytest.raises(ValueError, match="--resume"):
        train_run(_cfg(kaggle_root, epochs=2), interrupted, progress=False)
    # The resumed run reads its saved hyperparameters: a different seed on the command line is ignored.
    metrics = train_run(_cfg(kaggle_root, epochs=2, seed=99), interrupted, resume=True, progress=False)
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    _assert_same(_weights(straight), _weights(interrupted))
    ref = json.loads((straight / "metrics.json").read_text())["epochs"]
    assert [r["train_loss"] for r in metrics["epochs"]] == [r["train_loss"] for r in ref]


def test_same_seed_same_weights_whatever_the_workers(kaggle_root: Path, tmp_path: Path) -> None:
    train_run(_cfg(kaggle_root, workers=0), tmp_path / "a", progress=False)
    train_run(_cfg(kaggle_root, workers=1), tmp_path / "b", progress=False)
    train_run(_cfg(kaggle_root, seed=4), tmp_path / "c", progress=False)
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    a, c = _weights(tmp_path / "a"), _weights(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_classifier_on_pairs_predicts_the_dataset_classes(tmp_path: Path) -> None:
    data = tmp_path / "neu"
    make_pairs(data, [f"{i:06d}" for i in range(6)], [f"{i:06d}" for i in range(6, 10)])
    run = tmp_path / "cls"
    cfg = _cfg(data, task="classifier", net=TINY_CLS, crop=None, balanced=True)
    metrics = train_run(cfg, run, progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["class_ids"] == [1, 2, 3] and config["net"]["num_classes"] == 3
    assert config["class_names"] == {"1": "inclusion", "2": "patches", "3": "scratches"}
    row = metrics["epochs"][0]
    assert set(row["val_auc_per_class"]) == {"1", "2", "3"}
    assert metrics["score_name"] in ("val_mean_auc", "-val_loss")
    assert "val_mean_f1" in row


def test_cli_trains_and_refuses_to_overwrite(
    kaggle_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI takes the preset's network; shrink it so the test stays fast.
    from training.networks import presets

    monkeypatch.setitem(presets.PRESETS, "tiny", {"segmenter": {"num_classes": 4, **TINY_NET}})
    run = tmp_path / "cli"
    argv = [
        "train",
        "segmenter",
        "--data",
        str(kaggle_root),
        "--out",
        str(run),
        *TINY_RUN,
        "--crop",
        "32x64",
        "--workers",
        "0",
        "--max-images",
        "4",
        "--max-val-images",
        "1",
    ]
    assert main(argv) == exit_codes.OK
    config = json.loads((run / "config.json").read_text())
    assert (config["train_images"], config["val_images"]) == (4, 1)
    assert main(argv) == exit_codes.BAD_INPUT  # a run is there and --resume was not given
    assert main([*argv, "--resume"]) == exit_codes.OK  # already at 1 of 1 epochs: nothing to do
    assert main(
        ["train", "segmenter", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]
    ) == (exit_codes.BAD_INPUT)
    with pytest.raises(SystemExit):
        main(["train", "segmenter", "--data", ".", "--out", "x", "--crop", "256by512"])


def test_train_all_segmenter_only_writes_a_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.model_bundle import load_bundle
    from training.networks import presets

    monkeypatch.setitem(presets.PRESETS, "tiny", {"segmenter": {"num_classes": 3, **TINY_NET}})
    data = tmp_path / "neu"
    make_pairs(data, [f"{i:06d}" for i in range(6)], [f"{i:06d}" for i in range(6, 9)])
    bundle = tmp_path / "bundle"
    argv = [
        "train",
        "all",
        "--data",
        str(data),
        "--out",
        str(bundle),
        "--no-classifier",
        *TINY_RUN,
    ]
    assert main(argv) == exit_codes.OK
    assert (bundle / "runs" / "segmenter" / "model.pt").is_file()
    assert not (bundle / "runs" / "classifier").exists()
    loaded = load_bundle(bundle)
    assert loaded.classifier is None and loaded.class_ids == [1, 2, 3]
    assert json.loads((bundle / "metrics.json").read_text())
    before = (bundle / "runs" / "segmenter" / "checkpoint.pt").stat().st_mtime_ns
    # --resume on a finished run skips training and redoes only tuning and evaluation.
    assert main([*argv, "--resume"]) == exit_codes.OK
    assert (bundle / "runs" / "segmenter" / "checkpoint.pt").stat().st_mtime_ns == before


def test_crop_defaults_and_parsing() -> None:
    assert run_config.parse_crop("256x512") == (256, 512)
    assert run_config.parse_crop("full") is None
    assert run_config.default_crop("segmenter") == run_config.DEFAULT_SEGMENTER_CROP
    assert run_config.default_crop("classifier") is None
    with pytest.raises(ValueError, match="crop"):
        TrainConfig(task="segmenter", data=".", crop=(8, 8))
    with pytest.raises(ValueError, match="task"):
        TrainConfig(task="detector", data=".")


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    factors = [train_session.lr_factor(s, 100, 10) for s in range(100)]
    assert factors[:10] == sorted(factors[:10]) and factors[9] == pytest.approx(1.0)
    assert factors[10:] == sorted(factors[10:], reverse=True)
    assert train_session.lr_factor(100, 100, 10) == pytest.approx(train_session.MIN_LR_FRACTION)


def test_validation_scores_an_all_empty_prediction_as_kaggle_does(tmp_path: Path) -> None:
    from training.loader import FullFrames, collate
    from training.validation import validate

    names = [f"{i:09x}.png" for i in range(5)]
    truth = make_kaggle(tmp_path, names)

    class Empty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 4, *x.shape[2:]), -20.0)

    loader = torch.utils.data.DataLoader(
        FullFrames(open_dataset(tmp_path, "all")), batch_size=2, collate_fn=collate
    )
    cfg = TrainConfig(task="segmenter", data=str(tmp_path))
    result = validate(Empty(), cfg, loader, [1, 2, 3, 4], torch.device("cpu"), amp=False)
    # Kaggle Dice: an empty prediction scores 1 on an empty (image, class) pair and 0 elsewhere.
    empty_share = sum(int(not m.any()) for masks in truth.values() for m in masks) / (len(names) * 4)
    assert result["val_mean_dice"] == pytest.approx(empty_share)
    assert result["val_images"] == len(names)
    for class_index, class_id in enumerate("1234"):
        expected = sum(int(not masks[class_index].any()) for masks in truth.values()) / len(names)
        assert result["val_dice_per_class"][class_id] == pytest.approx(expected)
