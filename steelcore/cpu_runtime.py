"""The CPU runtime of the served networks: OpenVINO running the exported ONNX networks.

The networks are exported as ``training.triton_export.served_module`` wraps them (uint8 frames [B,
H, W] in; sigmoid probabilities out, the segmenter's as uint8 codes round(255 p)), so a compiled
network is a drop-in for the TorchScript one: the same input, the same output. This module imports
numpy and openvino only (no torch): Triton's python backend stubs load it without the 400-550 MB
that torch costs each of them.

Precision: ``"auto"`` leaves OpenVINO's CPU default, bf16 where the CPU computes it natively
(AVX512-BF16 or AMX) and f32 elsewhere; ``"f32"`` forces full precision (results equal eager torch
to about 1e-6, the segmenter's codes within one code). ``steel bench model`` and ``steel eval
--runtime openvino`` measure what each choice costs and gains on the machine at hand.

Int8: a network quantised by ``training.quantize`` (OpenVINO IR, ``.xml`` + ``.bin``) loads the
same way; its quantised operations run in int8 and the rest at the precision above.

Threads: OpenVINO's thread pinning is switched off, because several stub processes with one
thread each would otherwise all pin to the first cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS: tuple[str, ...] = ("auto", "f32", "bf16")


class OpenVINONetwork:
    """One compiled network; ``net(frames)`` returns its output as a new numpy array, in the
    network's own type (classifier: float32 probabilities; segmenter: uint8 probability codes).

    Not thread-safe (one infer request); give each thread its own instance.
    """

    def __init__(self, model_file: str | Path, threads: int = 1, precision: str = "auto") -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        model_file = Path(model_file)
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file} is missing")
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        model = core.read_model(str(model_file))
        # An int8 network (training.quantize) carries its quantisers as FakeQuantize operations.
        quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        # What the CPU plugin chose ("bf16" or "f32") for what is not int8, for reports.
        chosen = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        chosen = chosen.to_string() if hasattr(chosen, "to_string") else str(chosen).lower()
        self.precision = f"int8+{chosen}" if quantized else chosen
        self.threads = int(threads)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        output = self.request.infer({0: frames}, share_inputs=True, share_outputs=True)[0]
        # share_outputs hands out the request's own buffer, which the next call overwrites.
        return np.array(output, copy=True)
