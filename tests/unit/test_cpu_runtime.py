"""The OpenVINO CPU runtime (steelcore.cpu_runtime, training.openvino_bundle) against eager torch.

Speed is the benchmark's (`steel bench model`); here only outputs: at f32 the runtime must give
eager torch's probabilities to float rounding, at "auto" (bf16 on CPUs that have it) within a
bf16 tolerance, and every consumer of predict_probs must be able to run it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from random_bundle import save_random_bundle

from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from training.inference import predict_probs
from training.model_bundle import PostprocessParams, load_bundle

pytest.importorskip("openvino")

from steelcore.cpu_runtime import OpenVINONetwork
from training import openvino_bundle

pytestmark = pytest.mark.openvino


def make_bundle(path: Path, *, classifier: bool = True) -> Path:
    return save_random_bundle(
        path,
        name=path.name,
        description="random weights for the CPU runtime test",
        seed=2,
        classifier=classifier,
        postprocess=PostprocessParams([0.5] * 4, [0.5] * 4, [0] * 4),
    )


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "random-runtime")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, (3, FRAME_HEIGHT, FRAME_WIDTH), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(bundle_path: Path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    cls, seg = predict_probs(load_bundle(bundle_path), frames)
    assert cls is not None
    return cls, seg


def test_f32_runtime_equals_eager_torch(
    bundle_path: Path, frames: np.ndarray, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    pair = openvino_bundle.openvino_pair(load_bundle(bundle_path), threads=1, precision="f32")
    assert pair.precision == "f32"
    cls, seg = pair(frames)
    assert cls is not None and cls.dtype == seg.dtype == np.float32
    assert cls.shape == reference[0].shape and seg.shape == reference[1].shape
    np.testing.assert_allclose(cls, reference[0], rtol=0, atol=1e-5)
    # Both answer the segmenter's uint8 codes round(255 p) (as float, code / 255): float rounding
    # may tip a probability near a half code into the next one.
    np.testing.assert_allclose(seg, reference[1], rtol=0, atol=1 / 255 + 1e-6)
    _, codes = pair.served(frames)
    assert codes.dtype == np.uint8 and codes.shape == reference[1].shape
    expected = np.round(reference[1].astype(np.float64) * 255)
    assert np.abs(codes.astype(np.int16) - expected).max() <= 1
    assert np.mean(codes == expected) > 0.999


def test_auto_precision_stays_close_to_eager_torch(
    bundle_path: Path, frames: np.ndarray, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    pair = openvino_bundle.openvino_pair(load_bundle(bundle_path), threads=1, precision="auto")
    assert pair.precision in ("f32", "bf16")
    cls, seg = pair(frames)
    # bf16 keeps 8 bits of mantissa: probabilities move by a few hundredths at most, on average far less.
    assert np.abs(seg - reference[1]).mean() < 2e-3
    assert np.abs(seg - reference[1]).max() < 0.1
    np.testing.assert_allclose(cls, reference[0], rtol=0, atol=0.05)
    # Masks at 0.5 agree on all but a sliver of the pixels.
    assert np.mean((seg >= 0.5) != (reference[1] >= 0.5)) < 1e-3


def test_each_call_returns_its_own_array(bundle_path: Path, frames: np.ndarray, tmp_path: Path) -> None:
    path = openvino_bundle.export_onnx_networks(load_bundle(bundle_path), tmp_path)["classifier"]
    network = OpenVINONetwork(path, threads=1, precision="f32")
    first = network(frames[:1])
    kept = first.copy()
    network(frames[1:])  # reuses the request's output buffer
    np.testing.assert_array_equal(first, kept)
    assert network(frames).shape == (3, 4)


def test_attach_runtime_routes_predict_probs(bundle_path: Path, frames: np.ndarray) -> None:
    bundle = openvino_bundle.attach_runtime(load_bundle(bundle_path), "openvino", threads=1, precision="f32")
    assert isinstance(bundle.runtime, openvino_bundle.OpenVINOPair)
    calls = []
    runtime = bundle.runtime
    bundle.runtime = lambda f: calls.append(len(f)) or runtime(f)
    cls, seg = predict_probs(bundle, frames[:2])
    assert calls == [2] and cls is not None and seg.shape == (2, 4, FRAME_HEIGHT, FRAME_WIDTH)
    assert openvino_bundle.attach_runtime(bundle, "torch").runtime is None
    with pytest.raises(ValueError, match="runtime must be one of"):
        openvino_bundle.attach_runtime(bundle, "tensorrt")


def test_bundle_without_classifier(tmp_path: Path, frames: np.ndarray) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "seg-only", classifier=False))
    pair = openvino_bundle.openvino_pair(bundle, threads=1, precision="f32")
    cls, seg = pair(frames[:1])
    assert cls is None and seg.shape == (1, 4, FRAME_HEIGHT, FRAME_WIDTH)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        OpenVINONetwork(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="precision"):
        OpenVINONetwork(tmp_path / "missing.onnx", precision="int4")
    with pytest.raises(ValueError, match="threads"):
        OpenVINONetwork(tmp_path / "missing.onnx", threads=0)


def test_eval_cli_on_the_openvino_runtime(bundle_path: Path, tmp_path: Path) -> None:
    """`steel eval --runtime openvino --precision f32` scores as eager torch does."""
    from tiny_datasets import make_kaggle

    from training.evaluate import evaluate_bundle

    data = tmp_path / "data"  # the exported networks take Severstal-sized frames
    make_kaggle(data, [f"{k}.png" for k in range(3)], shape=(FRAME_HEIGHT, FRAME_WIDTH))
    torch_report = evaluate_bundle(bundle_path, data, "all", progress=False)
    ov_report = evaluate_bundle(
        bundle_path, data, "all", tmp_path / "ov.json", progress=False, runtime="openvino", precision="f32"
    )
    assert ov_report["model"]["runtime"] == "openvino" and ov_report["model"]["precision"] == "f32"
    assert abs(ov_report["summary"]["mean_dice"] - torch_report["summary"]["mean_dice"]) < 1e-6
    assert json.loads((tmp_path / "ov.json").read_text())["model"]["runtime"] == "openvino"


def _codes_model(scale: float, *, sigmoid: bool = True, dtype: type = np.float32) -> object:
    """x -> [sigmoid] -> * scale -> Round -> uint8: the tail the segmenter's codes are exported as."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([4096], dtype, name="x")
    head = ops.sigmoid(x) if sigmoid else x
    scaled = ops.multiply(head, ops.constant(dtype(scale)))
    codes = ops.convert(ops.round(scaled, "half_to_even"), "u8")
    return ov.Model([codes], [x])


def test_code_rounding_fused_into_a_quantizer_keeps_every_code() -> None:
    import openvino as ov

    from steelcore.cpu_runtime import fuse_code_rounding

    model = _codes_model(255.0)
    assert fuse_code_rounding(model) == 1
    types = {op.get_type_name() for op in model.get_ops()}
    assert "Round" not in types and "FakeQuantize" in types
    # Logits spread so that the codes cover 0..255, plus the saturated ends.
    x = np.concatenate([np.linspace(-12, 12, 4094), [-80.0, 80.0]]).astype(np.float32)
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x})[0]
    p = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    expected = np.round(p * 255)
    assert got.dtype == np.uint8
    assert set(np.unique(got)) == set(range(256))
    # float32 sigmoid against float64: a probability within float rounding of a half code may land
    # on either side of it.
    assert np.abs(got.astype(np.int16) - expected).max() <= 1
    assert np.mean(got == expected) > 0.995


@pytest.mark.parametrize(
    "scale, sigmoid, dtype",
    [(300.0, True, np.float32), (255.0, False, np.float32), (255.0, True, np.float16)],
)
def test_code_rounding_left_alone_where_values_could_leave_the_code_range_or_types_differ(
    scale: float, sigmoid: bool, dtype: type
) -> None:
    from steelcore.cpu_runtime import fuse_code_rounding

    model = _codes_model(scale, sigmoid=sigmoid, dtype=dtype)
    assert fuse_code_rounding(model) == 0
    assert "Round" in {op.get_type_name() for op in model.get_ops()}


def test_openvino_fake_quantize_rounds_half_to_even_as_round_does() -> None:
    """The rewrite's premise, checked on the installed OpenVINO: over [0, 255] with 256 levels its
    FakeQuantize rounds exact halves to even, as the Round it replaces (torch.round, ONNX Round)."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([510], np.float32)
    low, high = ops.constant(np.float32(0)), ops.constant(np.float32(255))
    model = ov.Model([ops.convert(ops.fake_quantize(x, low, high, low, high, 256), "u8")], [x])
    values = np.concatenate([np.arange(255) + 0.5, np.arange(255) + 0.49999997]).astype(np.float32)
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: values})[0]
    np.testing.assert_array_equal(got, np.round(values).astype(np.uint8))
