"""Python-backend models never call as_numpy() on a BLS output that may live on the GPU (issue 17,
item 9): with GPU networks (the ONNX repository) the cascade still answers. The GPU repository
written by `steel export --format onnx` is checked in test_onnx_repository.py with the same helpers."""

from __future__ import annotations

import numpy as np
import pytest
from fake_pb_utils import bls_requests_without_cpu_outputs, run_cascade_with_gpu_networks

from steelcore.paths import TRITON_REPOSITORY


def test_the_cascade_answers_when_its_networks_run_on_the_gpu() -> None:
    out = run_cascade_with_gpu_networks(TRITON_REPOSITORY / "steel_cascade")
    assert out["PROBS"][0, 0] == 1.0
    assert out["PIXEL_COUNTS"][0].tolist() == [7, 7, 7, 7]  # frame 0 was segmented
    assert out["PIXEL_COUNTS"][1].tolist() == [0, 0, 0, 0] and out["RLE"][1].tolist() == [b""] * 4


@pytest.mark.parametrize(
    "model_py", sorted(TRITON_REPOSITORY.glob("*/1/model.py")), ids=lambda p: p.parts[-3]
)
def test_every_bls_request_asks_for_cpu_outputs(model_py: object) -> None:
    assert bls_requests_without_cpu_outputs(model_py) == []  # type: ignore[arg-type]


def test_the_fake_backend_refuses_as_numpy_on_a_gpu_output() -> None:
    """The check above can fail: a request without preferred_memory gets GPU tensors here."""
    import fake_pb_utils as pb

    pb.SERVED["net"] = lambda inputs: {"OUT": np.ones(2)}
    pb.GPU_MODELS.add("net")
    response = pb.InferenceRequest("net", [pb.Tensor("X", np.ones(2))], ["OUT"]).exec()
    with pytest.raises(pb.TritonModelException, match="GPU"):
        pb.get_output_tensor_by_name(response, "OUT").as_numpy()
