"""The embedded Triton server serving a repository written from a bundle, against in-process `steel predict`.

One server for the module (four python stubs, two of them with torch, on two shared cores): the
repository is written from a random-weight bundle into a temporary folder and served on free
random ports. Thresholds are set from the in-process probabilities of the test frames so that
masks are non-trivial and the classifier gate clears about half of the frames (the case the
cascade exists for).

CPU convolutions give results that can differ in the last bits between batch sizes (1 vs 6
frames), and a pixel that close to its threshold flips. Exact comparisons therefore send the
frames in the batch composition the in-process reference used.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from random_bundle import random_bundle_fields, save_tuned_bundle, synthetic_frames
from running_server import running

from stack.service import free_port
from stack.triton_server import TritonServer
from steelcore.kaggle_csv import read_labels
from steelcore.postprocess import apply_postprocess, class_areas
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from steelcore.triton.ensemble_client import TritonEnsembleClient
from training.inference import predict_probs
from training.model_bundle import PostprocessParams, load_bundle
from training.predict import predict_submission
from training.triton_export import write_repository

pytestmark = pytest.mark.integration

N_FRAMES = 6
SERVER_START_TIMEOUT_S = 180.0
MODELS = ("steel_ensemble", "steel_cascade")


def tuned_params(cls_probs: np.ndarray, seg_probs: np.ndarray) -> PostprocessParams:
    """Thresholds that make the test frames an interesting case, set from their in-process outputs.

    Gates: the half of the frames with the lowest class-1 probability is cleared in every class;
    the other half keeps class 1, and each other class stays open in the frames above the cleared
    frames' maximum. Pixel thresholds keep the top 0.5 % of each class's pixels; the minimum area
    (24) lies between the sizes of the random network's smallest blobs (16 and 32 pixels).
    """
    order = np.argsort(cls_probs[:, 0])
    cleared, kept = order[: len(order) // 2], order[len(order) // 2 :]
    gates = [float((cls_probs[cleared, 0].max() + cls_probs[kept, 0].min()) / 2)]
    for c in range(1, cls_probs.shape[1]):
        low, high = cls_probs[cleared, c].max(), cls_probs[kept, c].max()
        gates.append(float((low + high) / 2) if high > low else 1.0)
    pixel = [float(np.percentile(seg_probs[:, c], 99.5)) for c in range(seg_probs.shape[1])]
    return PostprocessParams(gates, pixel, [24] * cls_probs.shape[1])


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_frames(N_FRAMES, seed=11)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory, frames: np.ndarray) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("bundle") / "random-serving"
    fields = random_bundle_fields(
        name="random-serving", description="random weights for the Triton integration test", seed=5
    )
    return save_tuned_bundle(path, fields, frames, tuned_params)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bundle_path: Path) -> Iterator[TritonServer]:
    repo = write_repository(bundle_path, tmp_path_factory.mktemp("triton-repo"))
    ports = [free_port() for _ in range(3)]
    triton = TritonServer(tmp_path_factory.mktemp("triton-run"), repo, *ports, wait_for=MODELS)
    yield from running(triton, SERVER_START_TIMEOUT_S, "Triton serving the random bundle")


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[TritonEnsembleClient]:
    with TritonEnsembleClient(server.grpc_url, "grpc", "steel_ensemble", timeout_s=60) as c:
        yield c


@pytest.fixture(scope="module")
def cascade(server: TritonServer) -> Iterator[TritonEnsembleClient]:
    with TritonEnsembleClient(server.grpc_url, "grpc", "steel_cascade", timeout_s=60) as c:
        yield c


def steel_predict(frames: np.ndarray, bundle_path: Path, folder: Path, batch_size: int) -> list[list[str]]:
    """Per-frame, per-class RLE strings written by `steel predict` for ``frames`` saved as PNG."""
    images = folder / "images"
    images.mkdir(parents=True)
    names = [f"frame{i:02d}.png" for i in range(len(frames))]
    for name, frame in zip(names, frames, strict=True):
        cv2.imwrite(str(images / name), frame)
    predict_submission(images, folder / "submission.csv", bundle_path, batch_size=batch_size, progress=False)
    labels = read_labels(folder / "submission.csv")
    return [labels[name] for name in names]


def in_process(frames: np.ndarray, bundle_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, pixel counts) computed in-process on one batch of ``frames``."""
    bundle = load_bundle(bundle_path)
    cls_probs, seg_probs = predict_probs(bundle, frames)
    assert cls_probs is not None
    return cls_probs, class_areas(apply_postprocess(cls_probs, seg_probs, bundle.postprocess))


def test_server_and_both_models_are_ready(server: TritonServer) -> None:
    assert server.ready()
    for model in MODELS:
        with TritonEnsembleClient(server.grpc_url, "grpc", model) as grpc_client:
            assert grpc_client.ready()
        with TritonEnsembleClient(server.http_url, "http", model) as http_client:
            assert http_client.ready()
    with TritonEnsembleClient(server.grpc_url, "grpc", "no_such_model") as missing:
        assert not missing.ready()


def test_ensemble_equals_steel_predict(
    client: TritonEnsembleClient, frames: np.ndarray, bundle_path: Path, tmp_path: Path
) -> None:
    expected_rles = steel_predict(frames, bundle_path, tmp_path, batch_size=N_FRAMES)
    expected_probs, expected_counts = in_process(frames, bundle_path)
    assert any(any(row) for row in expected_rles), "test setup: the masks should not all be empty"

    result = client.infer(frames)  # one request: the batch `steel predict` used
    assert result.rles == expected_rles
    np.testing.assert_array_equal(result.pixel_counts, expected_counts)
    np.testing.assert_allclose(result.probs, expected_probs, rtol=0, atol=1e-6)
    assert result.probs.dtype == np.float32 and result.pixel_counts.dtype == np.int64


def test_cascade_equals_steel_predict_and_skips_cleared_frames(
    cascade: TritonEnsembleClient, server: TritonServer, frames: np.ndarray, bundle_path: Path, tmp_path: Path
) -> None:
    expected_rles = steel_predict(frames, bundle_path, tmp_path, batch_size=1)
    segmented_before = inference_count(server, "segmenter")
    results = [cascade.infer(frames[i : i + 1]) for i in range(N_FRAMES)]  # batch 1, as the reference
    assert [r.rles[0] for r in results] == expected_rles
    expected_probs, _ = in_process(frames, bundle_path)
    np.testing.assert_allclose(np.concatenate([r.probs for r in results]), expected_probs, rtol=0, atol=1e-6)

    bundle = load_bundle(bundle_path)
    gates = np.asarray(bundle.postprocess.gate_threshold, dtype=np.float32)
    needs_segmenter = int((expected_probs >= gates).any(axis=1).sum())
    assert 0 < needs_segmenter < N_FRAMES, "test setup: the gate should clear some frames, not all"
    assert inference_count(server, "segmenter") - segmented_before == needs_segmenter


def test_cascade_and_ensemble_agree_on_one_batch(
    client: TritonEnsembleClient, cascade: TritonEnsembleClient, frames: np.ndarray
) -> None:
    ensemble, cascaded = client.infer(frames), cascade.infer(frames)
    np.testing.assert_array_equal(cascaded.probs, ensemble.probs)
    # The cascade segments a subset, a different batch: allow the last-bit flips described above.
    assert (
        np.abs(cascaded.pixel_counts - ensemble.pixel_counts).max() <= 0.01 * ensemble.pixel_counts.max() + 5
    )
    cleared = ensemble.pixel_counts.sum(axis=1) == 0
    assert all(cascaded.rles[i] == ["", "", "", ""] for i in np.flatnonzero(cleared))


def test_async_requests_in_flight_and_http_agree(
    server: TritonServer, client: TritonEnsembleClient, frames: np.ndarray
) -> None:
    futures = [client.infer_async(frames[i : i + 1]) for i in range(N_FRAMES)]
    results = [f.result(timeout=120) for f in futures]
    single = [client.infer(frames[i : i + 1]) for i in range(N_FRAMES)]
    for got, reference in zip(results, single, strict=True):
        # Dynamic batching may have grouped the concurrent frames: same tolerance as above.
        np.testing.assert_allclose(got.probs, reference.probs, rtol=0, atol=1e-5)
        assert (
            np.abs(got.pixel_counts - reference.pixel_counts).max() <= 0.01 * reference.pixel_counts.max() + 5
        )
    with TritonEnsembleClient(server.http_url, "http", "steel_ensemble", timeout_s=60) as http:
        over_http = http.infer(frames[:1])
    assert over_http.rles == single[0].rles
    np.testing.assert_array_equal(over_http.pixel_counts, single[0].pixel_counts)


def test_bad_input_is_an_error_response_and_the_server_keeps_serving(
    server: TritonServer, client: TritonEnsembleClient, frames: np.ndarray
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    raw = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for model in MODELS:
            for array, dtype in (
                (np.zeros((1, 100, 100), np.uint8), "UINT8"),  # wrong frame size
                (np.zeros((1, FRAME_HEIGHT, FRAME_WIDTH), np.float32), "FP32"),  # wrong dtype
            ):
                tensor = grpcclient.InferInput("FRAMES", list(array.shape), dtype)
                tensor.set_data_from_numpy(array)
                with pytest.raises(InferenceServerException):
                    raw.infer(model, [tensor], client_timeout=60)
    finally:
        raw.close()
    assert server.running() and server.ready()
    assert len(client.infer(frames[:2])) == 2


def inference_count(server: TritonServer, model: str) -> int:
    """Frames the model has inferred so far (Triton's nv_inference_count)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    prefix = f'nv_inference_count{{model="{model}",'
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)))
