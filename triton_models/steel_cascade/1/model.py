"""Triton python-backend BLS model: the classifier first, the segmenter only where it is needed.

Same interface as ``steel_ensemble`` (FRAMES [B, H, W] uint8 -> PROBS, PIXEL_COUNTS, RLE,
MODEL_VERSION). Version V of this model calls classifier, segmenter and postprocess at version V
(issue 16: each registered bundle is one version of all four), so a shadow version is reached
through its own cascade while the ensemble serves production; MODEL_VERSION is V.
Most frames of a steel line are clean; the ensemble runs the expensive segmenter on every one,
this model runs it only on frames with at least one class the classifier's gate leaves open
(probability >= gate_threshold, the rule of ``steelcore.postprocess.apply_postprocess``).
Gated classes of a segmented frame are cleared by the postprocess model as in the ensemble, so
both models answer identically. A frame whose every class is gated off is clean without
segmentation: zero pixels, empty RLE strings.

The gate thresholds come from ``postprocess.json`` beside this file (written by
``training/triton_export.py`` from the model bundle, the same file the postprocess model reads).
This stub imports numpy only: the networks run in their own models, reached through BLS.

Every BLS request asks for its outputs in CPU memory (``preferred_memory``): in the GPU
repository (``steel export --format onnx``) the networks are onnxruntime models on the GPU, whose
outputs would otherwise stay in GPU memory, where ``as_numpy()`` fails. Triton copies them to
the CPU instead; this stub works on them with numpy. (Inputs need nothing: the python backend
hands a model its inputs in CPU memory unless FORCE_CPU_ONLY_INPUT_TENSORS is "no".)
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def _parameter(config, key, default=None):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value is None else value


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        # Every BLS call names this version: "latest" would pick whichever bundle is newest.
        self.model_version = args["model_version"]
        self.classifier = _parameter(config, "classifier_model", "")
        self.segmenter = _parameter(config, "segmenter_model", "segmenter")
        self.postprocess = _parameter(config, "postprocess_model", "postprocess")
        self.max_batch = int(config["max_batch_size"])
        self.num_classes = int(next(o for o in config["output"] if o["name"] == "PIXEL_COUNTS")["dims"][0])
        params_file = Path(args["model_repository"]) / args["model_version"] / "postprocess.json"
        if not params_file.is_file():
            raise pb_utils.TritonModelException(f"{params_file} is missing: re-run `steel export`")
        gate = json.loads(params_file.read_text())["gate_threshold"]
        if len(gate) != self.num_classes:
            raise pb_utils.TritonModelException(
                f"{params_file}: {len(gate)} gate thresholds for {self.num_classes} classes"
            )
        self.gate = np.asarray(gate, dtype=np.float32)
        self.cpu_outputs = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def _call(self, model, inputs, outputs):
        request = pb_utils.InferenceRequest(
            model_name=model,
            model_version=int(self.model_version),
            inputs=inputs,
            requested_output_names=outputs,
            preferred_memory=self.cpu_outputs,
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    def _infer(self, frames):
        n = frames.shape[0]
        probs = np.zeros((n, self.num_classes), dtype=np.float32)
        counts = np.zeros((n, self.num_classes), dtype=np.int64)
        rles = np.full((n, self.num_classes), b"", dtype=np.object_)
        if self.classifier:
            (cls,) = self._call(self.classifier, [pb_utils.Tensor("FRAMES", frames)], ["CLS_PROBS"])
            probs[:] = cls
            selected = np.flatnonzero((cls >= self.gate).any(axis=1))
        else:  # no classifier, no gate: every frame is segmented
            cls = None
            selected = np.arange(n)
        for start in range(0, selected.size, self.max_batch):
            idx = selected[start : start + self.max_batch]
            (seg,) = self._call(
                self.segmenter, [pb_utils.Tensor("FRAMES", np.ascontiguousarray(frames[idx]))], ["SEG_PROBS"]
            )
            inputs = [pb_utils.Tensor("SEG_PROBS", seg)]
            if cls is not None:
                inputs.append(pb_utils.Tensor("CLS_PROBS", np.ascontiguousarray(cls[idx])))
            p, c, r = self._call(self.postprocess, inputs, ["PROBS", "PIXEL_COUNTS", "RLE"])
            probs[idx], counts[idx], rles[idx] = p, c, r
        return probs, counts, rles

    def execute(self, requests):
        try:
            frames = [pb_utils.get_input_tensor_by_name(r, "FRAMES").as_numpy() for r in requests]
            sizes = [f.shape[0] for f in frames]
            probs, counts, rles = self._infer(np.concatenate(frames))
        except Exception as exc:  # every request of the batch gets the error
            error = pb_utils.TritonError(f"{self.model_name}: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]

        responses = []
        start = 0
        for size in sizes:
            part = slice(start, start + size)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("PROBS", probs[part]),
                        pb_utils.Tensor("PIXEL_COUNTS", counts[part]),
                        pb_utils.Tensor("RLE", rles[part]),
                        pb_utils.Tensor(
                            "MODEL_VERSION", np.full((size, 1), int(self.model_version), dtype=np.int32)
                        ),
                    ]
                )
            )
            start += size
        return responses
