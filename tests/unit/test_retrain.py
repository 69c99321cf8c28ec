"""`steel retrain`: reviewed frames split by frame id, fine-tuning from production, a side-by-side
report and a candidate bundle; bad input leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_datasets import TINY_CLS, TINY_NET, make_kaggle

from steelcore import exit_codes
from steelcore.cli import main
from steelcore.kaggle_csv import read_labels
from training.datasets import in_val_split
from training.retrain import held_out, split_feedback


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _kaggle(root: Path, n: int, seed: int, prefix: str) -> Path:
    """n frames, two of them (when n >= 4) in the validation split that tuning needs."""
    names = [f"{prefix}{i:04d}.png" for i in range(400)]
    val = [name for name in names if in_val_split(name)][: 2 if n >= 4 else 0]
    make_kaggle(root, [name for name in names if name not in val][: n - len(val)] + val, seed=seed)
    return root


def test_held_out_frames_depend_on_the_id_only_and_match_the_share() -> None:
    ids = [f"L1-cam1-{i}" for i in range(4000)]
    picked = [i for i in ids if held_out(i, 0.2)]
    assert 0.18 < len(picked) / len(ids) < 0.22
    assert picked == [i for i in reversed(ids) if held_out(i, 0.2)][::-1]  # order does not matter
    assert not any(held_out(i, 0.0) for i in ids[:100])


def test_split_keeps_labels_and_never_puts_a_frame_in_both_parts(tmp_path: Path) -> None:
    source = _kaggle(tmp_path / "reviewed", 20, 0, "f")
    counts = split_feedback(source, tmp_path / "split", 0.3)
    assert counts["train"] + counts["holdout"] == 20 and counts["holdout"] >= 1
    names = {
        part: {p.name for p in (tmp_path / "split" / part / "train_images").iterdir()} for part in counts
    }
    assert not names["train"] & names["holdout"]
    original = read_labels(source / "train.csv")
    for part in counts:
        labels = read_labels(tmp_path / "split" / part / "train.csv")
        for image_id, rles in labels.items():
            assert image_id in names[part] and rles == original[image_id]


def test_too_few_reviewed_frames_is_bad_input_and_leaves_no_candidate(tmp_path: Path) -> None:
    source = _kaggle(tmp_path / "reviewed", 1, 0, "f")
    out = tmp_path / "candidate"
    argv = ["retrain", "--feedback", str(source), "--model", "default", "--out", str(out), "--no-progress"]
    assert main(argv) == exit_codes.BAD_INPUT
    assert not out.exists()
    assert main([*argv[:-1], "--holdout", "1.5"]) == exit_codes.USAGE
    assert main([*argv[:-1], "--feedback-factor", "inf"]) == exit_codes.USAGE


def test_retrain_fine_tunes_production_and_registers_a_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.model_bundle import load_bundle
    from training.networks import presets

    monkeypatch.setitem(presets.PRESETS, "tiny", {"segmenter": TINY_NET, "classifier": TINY_CLS})
    base = _kaggle(tmp_path / "base", 10, 0, "b")
    production = tmp_path / "production"
    common = ["--epochs", "1", "--crop", "32x64", "--threads", "1", "--no-progress"]
    assert (
        main(["train", "all", "--data", str(base), "--out", str(production), "--preset", "tiny", *common])
        == 0
    )
    reviewed = _kaggle(tmp_path / "reviewed", 12, 5, "r")
    candidate = tmp_path / "candidate"
    argv = [
        "retrain", "--feedback", str(reviewed), "--model", str(production), "--out", str(candidate),
        "--data", f"{base}:0.5", "--eval", str(base), "--holdout", "0.25", *common,
    ]  # fmt: skip
    assert main(argv) == exit_codes.OK
    assert (production / "drift_reference.json").is_file() and (candidate / "drift_reference.json").is_file()
    lifecycle = json.loads((candidate / "lifecycle.json").read_text())
    assert lifecycle == {"status": "candidate", "parent": "production", "created": lifecycle["created"]}
    report = json.loads((candidate / "retrain.json").read_text())
    held = report["reviewed_frames"]["holdout"]
    assert held >= 1 and report["reviewed_frames"]["train"] + held == 12
    for name in ("reviewed_holdout", "base"):
        row = report["comparison"][name]
        assert row["production"]["images"] == row["candidate"]["images"]
        assert row["dice_change"] == pytest.approx(
            row["candidate"]["mean_dice"] - row["production"]["mean_dice"]
        )
    assert report["comparison"]["reviewed_holdout"]["candidate"]["images"] == held
    # Fine-tuned from production: same architecture, moved weights.
    before, after = load_bundle(production), load_bundle(candidate)
    assert before.meta["segmenter"]["config"] == after.meta["segmenter"]["config"]
    moved = [
        not torch.equal(a, b)
        for a, b in zip(
            before.segmenter.state_dict().values(), after.segmenter.state_dict().values(), strict=True
        )
    ]
    assert any(moved)
    # The held-back frames were not trained on: they are absent from the candidate's training data.
    config = json.loads((candidate / "runs" / "segmenter" / "config.json").read_text())
    assert len(config["data"]) == 2 and str(reviewed) not in " ".join(config["data"])
