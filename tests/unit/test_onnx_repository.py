"""The GPU production repository (`steel export --format onnx --repo OUT`), checked on the CPU.

Triton's onnxruntime backend is not in the embedded wheel, so the ONNX networks are loaded with
onnxruntime's CPU provider and compared with in-process torch on the same frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from random_bundle import save_random_bundle

from steelcore.postprocess import probabilities
from steelcore.severstal import CLASS_IDS, FRAME_HEIGHT, FRAME_WIDTH
from training import triton_export
from training.inference import predict_probs
from training.model_bundle import PostprocessParams, load_bundle

ort = pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

OUTPUTS = {"classifier": "CLS_PROBS", "segmenter": "SEG_PROBS"}


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_bundle(
        tmp_path_factory.mktemp("bundle") / "random-onnx",
        name="random-onnx",
        description="random weights for the ONNX repository test",
        seed=1,
        postprocess=PostprocessParams.neutral(len(CLASS_IDS)),
    )


@pytest.fixture(scope="module")
def repo(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return triton_export.write_repository(bundle_path, tmp_path_factory.mktemp("onnx-repo"), "onnx")


def config(repo: Path, name: str) -> object:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def session(path: Path) -> object:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_networks_are_onnxruntime_models_on_gpu(repo: Path) -> None:
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    for name in OUTPUTS:
        cfg = config(repo, name)
        assert cfg.platform == "onnxruntime_onnx"  # type: ignore[attr-defined]
        assert [g.kind for g in cfg.instance_group] == [gpu]  # type: ignore[attr-defined]
        assert (repo / name / "1" / triton_export.ONNX_FILE).is_file()
        assert not (repo / name / "1" / "model.py").exists()
    # Post-processing stays a python model on the CPU; the interface is the CPU repository's.
    assert config(repo, "postprocess").backend == "python"  # type: ignore[attr-defined]
    assert config(repo, "steel_ensemble").platform == "ensemble"  # type: ignore[attr-defined]
    assert (repo / "steel_cascade" / "1" / "model.py").is_file()


def test_onnx_tensor_names_and_batch_axis_match_the_config(repo: Path) -> None:
    for name, output in OUTPUTS.items():
        cfg = config(repo, name)
        sess = session(repo / name / "1" / triton_export.ONNX_FILE)
        (inp,) = sess.get_inputs()  # type: ignore[attr-defined]
        (out,) = sess.get_outputs()  # type: ignore[attr-defined]
        assert (inp.name, out.name) == ("FRAMES", output)
        assert [i.name for i in cfg.input] == ["FRAMES"] and [o.name for o in cfg.output] == [output]  # type: ignore[attr-defined]
        assert inp.type == "tensor(uint8)"
        assert isinstance(inp.shape[0], str), "the batch dimension must be dynamic"
        assert list(inp.shape[1:]) == [FRAME_HEIGHT, FRAME_WIDTH]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_equals_torch(repo: Path, bundle_path: Path, batch: int) -> None:
    bundle = load_bundle(bundle_path)
    frames = np.random.default_rng(batch).integers(0, 256, (batch, FRAME_HEIGHT, FRAME_WIDTH), dtype=np.uint8)
    cls_ref, seg_ref = predict_probs(bundle, frames)
    for name, reference in (("classifier", cls_ref), ("segmenter", seg_ref)):
        sess = session(repo / name / "1" / triton_export.ONNX_FILE)
        (served,) = sess.run(None, {"FRAMES": frames})  # type: ignore[attr-defined]
        assert served.shape == reference.shape
        # The segmenter answers uint8 codes round(255 p), as predict_probs rounds them: float
        # rounding may tip a probability near a half code into the next one.
        assert served.dtype == (np.float32 if name == "classifier" else np.uint8)
        atol = 1e-5 if name == "classifier" else 1 / 255 + 1e-6
        np.testing.assert_allclose(probabilities(served), reference, rtol=0, atol=atol)


def test_python_models_of_the_gpu_repository_take_bls_outputs_in_cpu_memory(repo: Path) -> None:
    """Its networks run on the GPU: the cascade must ask for CPU outputs before as_numpy()."""
    from fake_pb_utils import bls_requests_without_cpu_outputs, run_cascade_with_gpu_networks

    for model_py in sorted(repo.glob("*/1/model.py")):
        assert bls_requests_without_cpu_outputs(model_py) == [], model_py
    out = run_cascade_with_gpu_networks(repo / "steel_cascade")
    assert out["PIXEL_COUNTS"].shape == (2, len(CLASS_IDS))
