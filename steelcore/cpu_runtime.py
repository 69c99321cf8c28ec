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
# The rewrite's quantizer spans the uint8 range the codes are converted into (their full scale,
# steelcore.postprocess.PROBABILITY_CODES, is that range's top; importing it would load OpenCV here).
_CODE_MAX = int(np.iinfo(np.uint8).max)


def _converts_to_uint8(node: Any) -> bool:
    return node.get_type_name() == "Convert" and str(node.get_destination_type()) == "u8"


def _is_code_rounding(op: Any) -> bool:
    """``op`` is Round(half to even) of an f32 Multiply(Sigmoid, scalar in (0, 255]), and every
    consumer converts it to uint8."""
    if op.get_type_name() != "Round" or op.get_attributes().get("mode") != "half_to_even":
        return False
    scaled = op.input_value(0)
    # f32 only: the quantizer's bounds are f32 constants.
    if scaled.get_node().get_type_name() != "Multiply" or scaled.get_element_type().get_type_name() != "f32":
        return False
    inputs = [scaled.get_node().input_value(i).get_node() for i in range(2)]
    if sorted(node.get_type_name() for node in inputs) != ["Constant", "Sigmoid"]:
        return False
    scale = next(node for node in inputs if node.get_type_name() == "Constant").get_data()
    if scale.size != 1 or not 0 < float(scale.reshape(-1)[0]) <= _CODE_MAX:
        return False
    targets = list(op.output(0).get_target_inputs())
    return bool(targets) and all(_converts_to_uint8(t.get_node()) for t in targets)


def fuse_code_rounding(model: Any) -> int:
    """Rewrite ``Convert(u8, Round(Multiply(Sigmoid(x), c)))``, the segmenter's uint8 codes, as
    ``Convert(u8, FakeQuantize(Multiply(...), 0, 255, 0, 255, 256 levels))``; returns how many.

    Same values: for inputs in [0, 255] that FakeQuantize is a round half to even, as Round's mode,
    and the sigmoid keeps the product in [0, c] with 0 < c <= 255. Why: the CPU plugin fuses the
    FakeQuantize into the head convolution, which then writes uint8 itself, whereas after Round the
    Convert ran as a separate reference kernel, 0.9 ms a frame (7-10% of the int8 segmenter).
    """
    import openvino.opset13 as ops

    rewritten = 0
    for op in model.get_ordered_ops():
        if not _is_code_rounding(op):
            continue
        low, high = (ops.constant(np.float32(v)) for v in (0, _CODE_MAX))
        quantized = ops.fake_quantize(op.input_value(0), low, high, low, high, _CODE_MAX + 1)
        op.output(0).replace(quantized.output(0))
        rewritten += 1
    return rewritten


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
        fuse_code_rounding(model)
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
