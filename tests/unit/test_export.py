"""`steel export` and the export functions: files that load back, match eager, and keep dynamic shapes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
from random_bundle import save_random_bundle

from steelcore import exit_codes
from steelcore.cli import main
from training.export import INPUT_NAME, OUTPUT_NAME, export_onnx, export_torchscript
from training.model_bundle import PostprocessParams, load_bundle
from training.networks import build_model, preset

TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny",
        name="tiny",
        description="export test",
        seed=0,
        class_ids=[1, 2, 3, 4],
        class_names={1: "a", 2: "b", 3: "c", 4: "d"},
        postprocess=PostprocessParams.neutral(4),
        provenance={},
    )


def test_cli_onnx_export_writes_files_that_match_eager(
    bundle_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "onnx"
    assert (
        main(["export", "--model", str(bundle_path), "--format", "onnx", "--out", str(out)]) == exit_codes.OK
    )
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == {"classifier": "classifier.onnx", "segmenter": "segmenter.onnx"}
    assert all(diff < TOLERANCE for diff in manifest["max_abs_diff"].values())
    printed = capsys.readouterr().out
    assert "segmenter" in printed and "classifier" in printed

    # Another batch size and frame size than the export used: the axes really are dynamic.
    bundle = load_bundle(bundle_path)
    frames = torch.rand(3, 1, 96, 416)
    session = onnxruntime.InferenceSession(str(out / "segmenter.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: frames.numpy()})
    with torch.no_grad():
        expected = bundle.segmenter(frames).numpy()
    assert logits.shape == (3, 4, 96, 416)
    print(f"ONNX segmenter at 3x1x96x416: max |ORT - eager| {np.abs(logits - expected).max():.2e}")
    assert np.abs(logits - expected).max() < TOLERANCE


def test_cli_torchscript_export_loads_without_the_training_code(bundle_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "ts"
    code = main(["export", "--model", str(bundle_path), "--format", "torchscript", "--out", str(out)])
    assert code == exit_codes.OK
    classifier = torch.jit.load(str(out / "classifier.torchscript.pt"))
    frames = torch.rand(2, 1, 120, 300)
    with torch.no_grad():
        expected = load_bundle(bundle_path).classifier(frames)  # type: ignore[misc]
        diff = (classifier(frames) - expected).abs().max()
    assert diff < TOLERANCE


def test_cli_missing_bundle_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["export", "--model", str(missing), "--out", str(tmp_path / "o")]) == exit_codes.BAD_INPUT
    assert str(missing) in capsys.readouterr().out


def test_cli_needs_out_or_repo() -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "--model", "default"])
    assert info.value.code == exit_codes.USAGE


def test_cli_repo_delegates_to_the_triton_writer(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.triton_export

    calls: list[tuple[Any, ...]] = []

    def write(*args: Any, int8: bool | None) -> None:
        calls.append((*args, int8))
        args[1].mkdir(exist_ok=True)
        (args[1] / training.triton_export.MANIFEST).write_text('{"int8": []}')

    monkeypatch.setattr(training.triton_export, "write_repository", write)
    repo = tmp_path / "repo"
    args = ["export", "--model", str(bundle_path), "--format", "onnx", "--repo", str(repo), "--kind", "cpu"]
    assert main(args) == exit_codes.OK
    assert main([*args, "--no-int8"]) == exit_codes.OK
    (bundle, out_dir, fmt, kind, int8), (*_, no_int8) = calls
    assert (bundle.name, out_dir, fmt, kind) == ("tiny", repo, "onnx", "cpu")
    assert int8 is None and no_int8 is False  # None: int8 when the bundle has it


def test_cli_repo_without_the_writer_fails_clearly(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "training.triton_export", None)  # makes the import raise ImportError
    code = main(["export", "--model", str(bundle_path), "--repo", str(tmp_path / "repo")])
    assert code == exit_codes.FAILURE
    assert "training.triton_export" in capsys.readouterr().out


def test_export_leaves_a_training_model_in_training_mode(tmp_path: Path) -> None:
    model = build_model("classifier", preset("small", "classifier")).train()
    diff = export_onnx(model, tmp_path / "c.onnx", (1, 1, 64, 128))
    assert model.training
    # Compared in eval mode: dropout and batch statistics would otherwise make any match impossible.
    assert diff < TOLERANCE


@pytest.mark.parametrize("shape", [(1, 1, 64), (0, 1, 64, 64)])
def test_export_rejects_a_bad_example_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    model = build_model("classifier", preset("small", "classifier"))
    with pytest.raises(ValueError, match="example_shape"):
        export_torchscript(model, tmp_path / "c.pt", shape)  # type: ignore[arg-type]
