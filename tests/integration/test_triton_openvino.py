"""The embedded Triton server serving the OpenVINO CPU repository (`--format openvino`, as triton_models/).

The networks run in the python-backend model through steelcore.cpu_runtime; written at f32
here, so that served results can be held to the in-process OpenVINO pair (training.openvino_bundle)
exactly and to eager torch within float rounding. The shipped repository's "auto" precision
(bf16 where the CPU has it) is measured against torch by `steel eval --runtime openvino`.
A quantised copy of the bundle (`steel quantize`) is served too: its version folders hold the int8
networks beside the ONNX files, and the served answers must be the in-process int8 pair's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from random_bundle import random_bundle_fields, save_tuned_bundle, synthetic_frames
from running_server import running

from stack.service import free_port
from stack.triton_server import TritonServer
from steelcore.postprocess import apply_postprocess, class_areas
from steelcore.rle import encode_stack
from steelcore.triton.ensemble_client import TritonEnsembleClient
from training.inference import predict_probs
from training.model_bundle import ModelBundle, PostprocessParams, load_bundle
from training.triton_export import ServingLayout, write_repository

pytestmark = [pytest.mark.integration, pytest.mark.openvino]
pytest.importorskip("openvino")

N_FRAMES = 4
MODELS = ("steel_ensemble", "steel_cascade")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_frames(N_FRAMES, seed=12)


def top_pixels(cls_probs: np.ndarray, seg_probs: np.ndarray) -> PostprocessParams:
    """Pixel thresholds keep the top 1% of each class's pixels: non-trivial masks; gates open."""
    pixel = [float(np.percentile(seg_probs[:, c], 99.0)) for c in range(seg_probs.shape[1])]
    return PostprocessParams([0.0] * 4, pixel, [16] * 4)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory, frames: np.ndarray) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("bundle") / "random-openvino"
    fields = random_bundle_fields(
        name="random-openvino", description="random weights for the OpenVINO Triton test", seed=6
    )
    return save_tuned_bundle(path, fields, frames, top_pixels)


def _serving(repo: Path, tmp_path_factory: pytest.TempPathFactory, what: str) -> Iterator[TritonServer]:
    triton = TritonServer(
        tmp_path_factory.mktemp("ov-run"), repo, *[free_port() for _ in range(3)], wait_for=MODELS
    )
    yield from running(triton, 180, what)


def assert_served_as_in_process(
    server: TritonServer, frames: np.ndarray, bundle: ModelBundle
) -> tuple[np.ndarray, np.ndarray]:
    """Both served models answer what ``bundle``'s in-process runtime, post-processing and RLE
    answer, exactly; returns the in-process (segmenter probabilities, masks)."""
    cls, seg = predict_probs(bundle, frames)
    masks = apply_postprocess(cls, seg, bundle.postprocess)
    expected_rles = [list(encode_stack(m)) for m in masks]
    for model in MODELS:
        with TritonEnsembleClient(server.grpc_url, "grpc", model, timeout_s=120) as client:
            result = client.infer(frames)  # one request, the batch the reference used
        np.testing.assert_allclose(result.probs, cls, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(result.pixel_counts, class_areas(masks))
        assert result.rles == expected_rles, model
    return seg, masks


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bundle_path: Path) -> Iterator[TritonServer]:
    repo = write_repository(
        bundle_path, tmp_path_factory.mktemp("ov-repo"), "openvino", layout=ServingLayout(precision="f32")
    )
    yield from _serving(repo, tmp_path_factory, "Triton serving the OpenVINO repository")


def test_openvino_ensemble_equals_the_in_process_runtime(
    server: TritonServer, frames: np.ndarray, bundle_path: Path
) -> None:
    from training.openvino_bundle import attach_runtime

    bundle = attach_runtime(load_bundle(bundle_path), "openvino", threads=1, precision="f32")
    seg, masks = assert_served_as_in_process(server, frames, bundle)
    assert masks.any(), "test setup: the masks should not all be empty"
    _, torch_seg = predict_probs(load_bundle(bundle_path), frames)
    # The runtime itself, at f32: the same uint8 codes as eager torch, give or take a code where
    # float rounding tips a probability near a half code.
    np.testing.assert_allclose(seg, torch_seg, rtol=0, atol=1 / 255 + 1e-6)
    assert np.mean(seg == torch_seg) > 0.999


@pytest.fixture(scope="module")
def int8_bundle_path(tmp_path_factory: pytest.TempPathFactory, bundle_path: Path) -> Path:
    import shutil

    pytest.importorskip("nncf")
    from training.quantize import quantize_bundle

    path = tmp_path_factory.mktemp("bundle-int8") / "random-openvino-int8"
    shutil.copytree(bundle_path, path)
    # Both networks, so that a served full-precision network in place of either shows.
    quantize_bundle(load_bundle(path), [], synthetic=4, networks=("classifier", "segmenter"))
    return path


@pytest.fixture(scope="module")
def int8_server(tmp_path_factory: pytest.TempPathFactory, int8_bundle_path: Path) -> Iterator[TritonServer]:
    repo = write_repository(int8_bundle_path, tmp_path_factory.mktemp("ov-int8-repo"), "openvino")
    yield from _serving(repo, tmp_path_factory, "Triton serving the int8 OpenVINO repository")


def test_int8_ensemble_equals_the_in_process_int8_pair(
    int8_server: TritonServer, frames: np.ndarray, int8_bundle_path: Path
) -> None:
    from training.openvino_bundle import attach_runtime

    bundle = attach_runtime(load_bundle(int8_bundle_path), "openvino", threads=1, precision="int8")
    assert bundle.runtime.precision.startswith("int8+")
    assert_served_as_in_process(int8_server, frames, bundle)
