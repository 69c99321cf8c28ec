"""`steel quantize`: a bundle's int8 networks, where they are served from, and when they are refused.

A random-weight bundle keeps these quick; the shipped model's int8 accuracy against eager torch is
held to issue 14's bound on real and synthetic frames in test_int8_accuracy.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from random_bundle import save_random_bundle, synthetic_frames

from steelcore import exit_codes
from steelcore.cli import main
from training.inference import predict_probs
from training.model_bundle import PostprocessParams, load_bundle

pytestmark = pytest.mark.openvino
pytest.importorskip("openvino")
pytest.importorskip("nncf")

from training import quantize, triton_export  # noqa: E402  (needs nncf's skip first)
from training.openvino_bundle import openvino_pair, serving_precision  # noqa: E402

NETWORKS = ("classifier", "segmenter")


def _random_bundle(path: Path, seed: int = 3) -> Path:
    return save_random_bundle(
        path,
        name=path.name,
        description="random weights for the quantisation tests",
        seed=seed,
        postprocess=PostprocessParams.neutral(4),
        provenance={},
    )


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good frames, one file that is no image and one image of the wrong size."""
    folder = tmp_path_factory.mktemp("calibration")
    for i, frame in enumerate(synthetic_frames(3, seed=21)):
        cv2.imwrite(str(folder / f"frame{i}.png"), frame)
    (folder / "broken.jpg").write_bytes(b"not an image")
    cv2.imwrite(str(folder / "small.png"), np.zeros((100, 100), np.uint8))
    return folder


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, calibration_folder: Path) -> Path:
    torch.set_num_threads(1)
    path = _random_bundle(tmp_path_factory.mktemp("bundles") / "random-int8")
    quantize.quantize_bundle(load_bundle(path), [calibration_folder], synthetic=2, networks=NETWORKS)
    return path


def test_quantize_records_what_it_was_calibrated_on(quantized: Path) -> None:
    record = json.loads((quantized / quantize.INT8_DIR / quantize.RECORD_FILE).read_text())
    assert record["calibration"]["real_frames"] == 3
    assert record["calibration"]["skipped"] == 2  # the broken file and the small image
    assert record["calibration"]["synthetic_frames"] == 2
    assert record["networks"] == ["classifier", "segmenter"]
    assert set(quantize.load_int8_files(quantized)) == {"classifier", "segmenter"}


def test_the_int8_pair_runs_int8_and_stays_near_eager_torch(quantized: Path) -> None:
    frames = synthetic_frames(2, seed=5)
    pair = openvino_pair(load_bundle(quantized), 1, "int8")
    assert pair.precision.startswith("int8+")
    cls, seg = pair(frames)
    cls_ref, seg_ref = predict_probs(load_bundle(quantized), frames)
    assert seg.shape == seg_ref.shape and seg.dtype == seg_ref.dtype
    # Random weights answer almost constant maps; what is checked is that the int8 networks are
    # the bundle's own, within quantisation error (a wrong network is off by far more).
    np.testing.assert_allclose(cls, cls_ref, rtol=0, atol=0.02)
    assert float(np.abs(seg - seg_ref).mean()) < 0.01


def test_the_repository_serves_the_int8_networks(quantized: Path, tmp_path: Path) -> None:
    from steelcore.cpu_runtime import OpenVINONetwork

    repo = triton_export.write_repository(quantized, tmp_path / "repo", "openvino")
    manifest = json.loads((repo / triton_export.MANIFEST).read_text())
    assert manifest["int8"] == ["classifier", "segmenter"]
    frames = synthetic_frames(2, seed=8)
    in_process = openvino_pair(load_bundle(quantized), 1, "int8").served(frames)
    for i, name in enumerate(("classifier", "segmenter")):
        version = repo / name / "1"
        config = (repo / name / "config.pbtxt").read_text()
        assert '"int8_file"' in config and triton_export.INT8_FILE in config
        # The full-precision network stays beside it (versions without int8 share this config).
        assert (version / triton_export.ONNX_FILE).is_file()
        served = OpenVINONetwork(version / triton_export.INT8_FILE, 1)
        assert served.precision.startswith("int8+")
        np.testing.assert_array_equal(served(frames), in_process[i])

    plain = triton_export.write_repository(quantized, tmp_path / "plain", "openvino", int8=False)
    assert json.loads((plain / triton_export.MANIFEST).read_text())["int8"] == []
    assert not (plain / "segmenter" / "1" / triton_export.INT8_FILE).exists()


def test_a_failed_quantisation_leaves_the_earlier_networks(
    quantized: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nncf

    folder = quantized / quantize.INT8_DIR
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("quantisation failed")

    monkeypatch.setattr(nncf, "quantize", fail)
    with pytest.raises(RuntimeError, match="quantisation failed"):
        quantize.quantize_bundle(load_bundle(quantized), [], synthetic=1)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in quantized.iterdir() if p.name.startswith(".int8-writing-")]


def test_changed_weights_make_the_int8_networks_stale(quantized: Path, tmp_path: Path) -> None:
    import shutil

    bundle_path = tmp_path / "changed"
    shutil.copytree(quantized, bundle_path)
    other = _random_bundle(tmp_path / "other", seed=4)
    shutil.copyfile(other / "segmenter.pt", bundle_path / "segmenter.pt")

    assert serving_precision(load_bundle(quantized)) == "int8"
    assert serving_precision(load_bundle(bundle_path)) == "auto"  # what the export then serves
    with pytest.raises(quantize.StaleQuantization, match="steel quantize"):
        openvino_pair(load_bundle(bundle_path), 1, "int8")
    with pytest.raises(quantize.StaleQuantization):
        triton_export.write_repository(bundle_path, tmp_path / "required", "openvino", int8=True)
    # By default the export serves full precision rather than another model's networks.
    repo = triton_export.write_repository(bundle_path, tmp_path / "repo", "openvino")
    assert json.loads((repo / triton_export.MANIFEST).read_text())["int8"] == []
    assert not (repo / "segmenter" / "1" / triton_export.INT8_FILE).exists()


def test_a_bundle_never_quantised(tmp_path: Path) -> None:
    bundle_path = _random_bundle(tmp_path / "plain")
    assert serving_precision(load_bundle(bundle_path)) == "auto"
    with pytest.raises(FileNotFoundError, match="steel quantize"):
        openvino_pair(load_bundle(bundle_path), 1, "int8")
    with pytest.raises(FileNotFoundError):
        triton_export.write_repository(bundle_path, tmp_path / "repo", "openvino", int8=True)
    with pytest.raises(ValueError, match="openvino"):
        triton_export.write_repository(bundle_path, tmp_path / "ts", "torchscript", int8=True)


def test_steel_quantize_command(
    tmp_path: Path, calibration_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle_path = _random_bundle(tmp_path / "cli")
    args = ["quantize", "--model", str(bundle_path)]
    assert main([*args, "--calibration", str(tmp_path / "missing")]) == exit_codes.BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert main([*args, "--synthetic", "0"]) == exit_codes.BAD_INPUT  # no frame at all
    assert "no calibration frames" in capsys.readouterr().err
    assert main([*args, "--synthetic", "-1"]) == exit_codes.BAD_INPUT
    assert not quantize.int8_files(bundle_path)

    assert main([*args, "--networks", "segmenter,decoder"]) == exit_codes.BAD_INPUT
    assert not quantize.int8_files(bundle_path)

    assert main([*args, "--calibration", str(calibration_folder), "--synthetic", "1"]) == exit_codes.OK
    assert "3 real + 1 synthetic frames, 2 skipped" in capsys.readouterr().out
    # By default the segmenter only; the classifier keeps full precision.
    assert set(quantize.load_int8_files(bundle_path)) == {"segmenter"}
    pair = openvino_pair(load_bundle(bundle_path), 1, "int8")
    assert pair.segmenter.precision.startswith("int8+")
    assert pair.classifier is not None and not pair.classifier.precision.startswith("int8")
    # Quantising again replaces what was there.
    assert main([*args, "--synthetic", "1", "--networks", "classifier"]) == exit_codes.OK
    assert set(quantize.load_int8_files(bundle_path)) == {"classifier"}
