"""A stand-in for Triton's ``triton_python_backend_utils`` that keeps tensors where a GPU server would.

A BLS response's outputs stay in GPU memory when the called model ran on the GPU, unless the
request asked for CPU memory (``preferred_memory``); ``as_numpy()`` on a GPU tensor raises, as
the real python backend does ("as_numpy is only supported for CPU tensors"). Models named in
``gpu_models`` answer on the GPU. Used to run the repository's python models without Triton.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_GPU = 2


class TritonModelException(Exception):
    pass


class TritonError:
    def __init__(self, msg: str) -> None:
        self._msg = msg

    def message(self) -> str:
        return self._msg


class PreferredMemory:
    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class Tensor:
    def __init__(self, name: str, array: np.ndarray, *, on_gpu: bool = False) -> None:
        self._name, self._array, self._on_gpu = name, np.asarray(array), on_gpu

    def name(self) -> str:
        return self._name

    def is_cpu(self) -> bool:
        return not self._on_gpu

    def as_numpy(self) -> np.ndarray:
        if self._on_gpu:
            raise TritonModelException("Tensor is stored in GPU and cannot be converted to NumPy.")
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None) -> None:
        self.output_tensors, self._error = output_tensors, error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class Request:
    def __init__(self, inputs: list[Tensor]) -> None:
        self.inputs = inputs


def get_input_tensor_by_name(request: Any, name: str) -> Tensor | None:
    return next((t for t in request.inputs if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors if t.name() == name), None)


# model name -> function(inputs by name) -> outputs by name; set by the test.
SERVED: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {}
GPU_MODELS: set[str] = set()


class InferenceRequest:
    def __init__(
        self,
        model_name: str,
        inputs: list[Tensor],
        requested_output_names: list[str],
        preferred_memory: PreferredMemory | None = None,
        **_: Any,
    ) -> None:
        self.model_name, self.inputs, self.outputs = model_name, inputs, requested_output_names
        self.preferred_memory = preferred_memory

    def exec(self) -> InferenceResponse:
        answer = SERVED[self.model_name]({t.name(): t.as_numpy() for t in self.inputs})
        wants_cpu = (
            self.preferred_memory is not None
            and self.preferred_memory.preferred_memory_type == TRITONSERVER_MEMORY_CPU
        )
        on_gpu = self.model_name in GPU_MODELS and not wants_cpu
        return InferenceResponse([Tensor(n, answer[n], on_gpu=on_gpu) for n in self.outputs])


def load_model(model_py: Path) -> types.ModuleType:
    """Import a repository's model.py against this module as triton_python_backend_utils."""
    sys.modules["triton_python_backend_utils"] = sys.modules[__name__]
    spec = importlib.util.spec_from_file_location(f"model_{abs(hash(model_py))}", model_py)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_args(model_dir: Path, config: dict[str, Any]) -> dict[str, str]:
    return {
        "model_config": json.dumps(config),
        "model_name": model_dir.name,
        "model_repository": str(model_dir),
        "model_version": "1",
    }


def bls_requests_without_cpu_outputs(model_py: Path) -> list[int]:
    """Line numbers of InferenceRequest(...) calls in ``model_py`` that do not pass preferred_memory."""
    lines = []
    for node in ast.walk(ast.parse(model_py.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "InferenceRequest" and "preferred_memory" not in {k.arg for k in node.keywords}:
                lines.append(node.lineno)
    return lines


def run_cascade_with_gpu_networks(model_dir: Path, classifier: str = "classifier") -> dict[str, np.ndarray]:
    """Run ``model_dir``'s cascade model.py on two frames, its networks answering on the GPU;
    returns the outputs of the response (raises the model's error)."""
    gate = np.asarray(json.loads((model_dir / "1" / "postprocess.json").read_text())["gate_threshold"])
    n_classes = gate.size
    # Frame 0 passes the gate for class 1 (segmented), frame 1 passes none (clean).
    cls = np.stack([np.where(np.arange(n_classes) == 0, 1.0, 0.0), np.zeros(n_classes)]).astype(np.float32)
    if (cls[1] >= gate).any():  # a gate of 0 opens every class: both frames are segmented
        cls[1] = 0.0
    GPU_MODELS.clear()
    GPU_MODELS.update({classifier, "segmenter"})
    SERVED.clear()
    SERVED[classifier] = lambda inputs: {"CLS_PROBS": cls[: inputs["FRAMES"].shape[0]]}
    SERVED["segmenter"] = lambda inputs: {
        "SEG_PROBS": np.zeros((inputs["FRAMES"].shape[0], n_classes, 4, 4), np.uint8)
    }
    SERVED["postprocess"] = lambda inputs: {
        "PROBS": inputs["CLS_PROBS"],
        "PIXEL_COUNTS": np.full(inputs["CLS_PROBS"].shape, 7, np.int64),
        "RLE": np.full(inputs["CLS_PROBS"].shape, b"1 7", dtype=np.object_),
    }
    config = {
        "max_batch_size": 8,
        "output": [{"name": "PIXEL_COUNTS", "dims": [n_classes]}],
        "parameters": {
            "classifier_model": {"string_value": classifier},
            "segmenter_model": {"string_value": "segmenter"},
            "postprocess_model": {"string_value": "postprocess"},
        },
    }
    model = load_model(model_dir / "1" / "model.py").TritonPythonModel()
    model.initialize(model_args(model_dir, config))
    frames = np.zeros((2, 256, 1600), np.uint8)
    (response,) = model.execute([Request([Tensor("FRAMES", frames)])])
    if response.has_error():
        raise TritonModelException(response.error().message())
    return {t.name(): t.as_numpy() for t in response.output_tensors}
