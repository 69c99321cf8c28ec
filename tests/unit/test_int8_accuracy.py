"""The shipped model's int8 networks (what triton_models/ serves) against eager torch, on real frames
and on synthetic ones: issue 14 allows the faster runtime a mean Dice within 0.005 of eager torch.

Post-processed mean Dice over (image, class) pairs, as `steel eval` reports it, on the 65 labelled
real frames of ../shared/data/severstal_real and on synthetic frames from a seed the calibration set
(`steel quantize`, seed 7) never drew from. The calibration used the unlabelled real frames only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steelcore.paths import MODELS_DIR, SHARED_DATA_DIR, TRITON_REPOSITORY

pytestmark = pytest.mark.openvino
pytest.importorskip("openvino")

from training.evaluate import evaluate_bundle  # noqa: E402
from training.quantize import load_int8_files  # noqa: E402

# Issue 14: the faster CPU runtime keeps mean Dice within this of eager torch.
DICE_BOUND = 0.005
REAL = SHARED_DATA_DIR / "severstal_real"
SHIPPED = MODELS_DIR / "default"


def _dice(data: Path, runtime: str, tmp_path: Path) -> float:
    report = evaluate_bundle(
        SHIPPED, data, "all", tmp_path / f"{runtime}.json", progress=False, runtime=runtime, precision="int8"
    )
    return float(report["summary"]["mean_dice"])


def test_the_shipped_int8_networks_are_its_own_and_served() -> None:
    files = load_int8_files(SHIPPED)  # raises when made from other weights than the bundle holds
    manifest = json.loads((TRITON_REPOSITORY / "repository.json").read_text())
    assert manifest["int8"] == sorted(files)
    for task, path in files.items():
        for suffix in (".xml", ".bin"):
            served = (TRITON_REPOSITORY / task / "1" / "model").with_suffix(suffix)
            assert served.read_bytes() == path.with_suffix(suffix).read_bytes(), served


@pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is not beside the checkout")
def test_int8_keeps_eager_torchs_dice_on_real_frames(tmp_path: Path) -> None:
    torch_dice, int8_dice = _dice(REAL, "torch", tmp_path), _dice(REAL, "openvino", tmp_path)
    assert abs(int8_dice - torch_dice) <= DICE_BOUND, (torch_dice, int8_dice)


def test_int8_keeps_eager_torchs_dice_on_synthetic_frames(tmp_path: Path) -> None:
    from producers.synth_dataset import SynthConfig, write_dataset

    data = tmp_path / "synth"
    write_dataset(data, SynthConfig(n=120, seed=2), jobs=2, progress=False)
    torch_dice, int8_dice = _dice(data, "torch", tmp_path), _dice(data, "openvino", tmp_path)
    assert abs(int8_dice - torch_dice) <= DICE_BOUND, (torch_dice, int8_dice)
