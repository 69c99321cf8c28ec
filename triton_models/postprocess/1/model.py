"""Triton python-backend model: classifier gating, pixel thresholds, minimum areas, RLE per class.

Inputs CLS_PROBS [B, C] (optional: a bundle without a classifier has no gate) and SEG_PROBS
[B, C, H, W] UINT8 (probability codes, round(255 p)); outputs PROBS [B, C] FP32, PIXEL_COUNTS
[B, C] INT64, RLE [B, C] strings and MODEL_VERSION [B, 1] INT32: this model's own version, the number of the bundle whose thresholds
judged the frame (issue 16). Read from the answer, it is exact even while production switches.
The thresholds come from ``postprocess.json`` beside this file, copied from the model bundle by
``training/triton_export.py``; nothing here is tuned by hand.

The masks are made by ``steelcore.postprocess.apply_postprocess`` and encoded by
``steelcore.rle``, the functions `steel predict` and `steel eval` use, so served and offline
results agree exactly. The stub imports them from the interpreter it runs with: the embedded
server puts the project's venv first on PATH, and the production image installs the package
(``pip install resunet-steel``). Neither module imports torch, so this stub stays small.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import triton_python_backend_utils as pb_utils

from steelcore.postprocess import apply_postprocess, class_areas, probabilities
from steelcore.rle import encode_stack


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.model_version = int(args["model_version"])
        # One core's worth of work per batch; cv2 threads would compete with the networks.
        cv2.setNumThreads(1)
        params_file = Path(args["model_repository"]) / args["model_version"] / "postprocess.json"
        if not params_file.is_file():
            raise pb_utils.TritonModelException(f"{params_file} is missing: re-run `steel export`")
        data = json.loads(params_file.read_text())
        # Duck-typed PostprocessParams: the dataclass lives beside torch in model_bundle.
        self.params = SimpleNamespace(
            gate_threshold=[float(v) for v in data["gate_threshold"]],
            pixel_threshold=[float(v) for v in data["pixel_threshold"]],
            min_area=[int(v) for v in data["min_area"]],
        )
        num_classes = int(next(o for o in config["output"] if o["name"] == "PIXEL_COUNTS")["dims"][0])
        for key, values in vars(self.params).items():
            if len(values) != num_classes:
                raise pb_utils.TritonModelException(
                    f"{params_file}: {key} has {len(values)} entries for {num_classes} classes"
                )

    def _run(self, cls_probs, seg_probs):
        masks = apply_postprocess(cls_probs, seg_probs, self.params)
        # Without a classifier the probability of a class is its most confident pixel.
        probs = cls_probs if cls_probs is not None else probabilities(seg_probs.max(axis=(2, 3)))
        rles = np.array([[r.encode() for r in encode_stack(frame)] for frame in masks], dtype=np.object_)
        return probs.astype(np.float32, copy=False), class_areas(masks), rles

    def execute(self, requests):
        responses = []
        # Post-processing is per frame, so each request is handled alone: a bad request fails
        # on its own and the others of the batch are still answered.
        for request in requests:
            try:
                seg = pb_utils.get_input_tensor_by_name(request, "SEG_PROBS").as_numpy()
                cls_tensor = pb_utils.get_input_tensor_by_name(request, "CLS_PROBS")
                cls = cls_tensor.as_numpy() if cls_tensor is not None else None
                probs, counts, rles = self._run(cls, seg)
                versions = np.full((probs.shape[0], 1), self.model_version, dtype=np.int32)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("PROBS", probs),
                            pb_utils.Tensor("PIXEL_COUNTS", counts),
                            pb_utils.Tensor("RLE", rles),
                            pb_utils.Tensor("MODEL_VERSION", versions),
                        ]
                    )
                )
            except Exception as exc:  # becomes this request's error response
                error = pb_utils.TritonError(f"{self.model_name}: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
