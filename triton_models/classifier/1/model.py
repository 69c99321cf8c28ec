"""Triton python-backend model running one exported TorchScript network on uint8 frames.

The same file serves ``classifier`` and ``segmenter`` (``training/triton_export.py`` copies
segmenter/1/model.py to both; a unit test keeps the two copies equal): the config's parameters name the
TorchScript file (written beside this file by ``training/triton_export.py``), the input and
output tensors, and the torch thread count. The TorchScript module takes uint8 frames
[B, H, W] and returns sigmoid probabilities, the preprocessing of ``training.inference.
predict_probs``, so served and in-process outputs agree.

Follows the python_backend examples: the config is parsed once in ``initialize``, the model is
loaded and warmed up once; ``execute`` concatenates the requests of a dynamic batch, runs one
forward under ``inference_mode``, splits the result back and returns exactly one response per
request, a failure becoming an error response for the requests it affected.
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


def _parameter(config, key, default=None):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None:
        if default is None:
            raise pb_utils.TritonModelException(f"config.pbtxt needs parameter {key!r}")
        return default
    return value


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        # Keep (instances x threads) within the machine's cores: oversubscribing two cores cut
        # throughput to a quarter. Inter-op threads can only be set once per process.
        torch.set_num_threads(int(_parameter(config, "torch_threads", "1")))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.input_name = _parameter(config, "input_name")
        self.output_name = _parameter(config, "output_name")
        output = next(o for o in config["output"] if o["name"] == self.output_name)
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

        if args.get("model_instance_kind") == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
        model_file = Path(args["model_repository"]) / args["model_version"] / _parameter(config, "model_file")
        if not model_file.is_file():
            raise pb_utils.TritonModelException(
                f"{model_file} is missing: write the repository with "
                "`steel export --model NAME --format torchscript --repo DIR`"
            )
        self.module = torch.jit.load(str(model_file), map_location=self.device).eval()

        input_dims = next(i for i in config["input"] if i["name"] == self.input_name)["dims"]
        warmup = torch.zeros((1, *[int(d) for d in input_dims]), dtype=torch.uint8, device=self.device)
        with torch.inference_mode():
            self.module(warmup)

    def execute(self, requests):
        try:
            frames = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
            sizes = [f.shape[0] for f in frames]
            batch = torch.from_numpy(np.ascontiguousarray(np.concatenate(frames))).to(self.device)
            with torch.inference_mode():
                probs = self.module(batch).float().cpu().numpy().astype(self.output_dtype, copy=False)
        except Exception as exc:  # every request gets the error, the model keeps serving
            error = pb_utils.TritonError(f"{self.model_name}: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]

        responses = []
        start = 0
        for size in sizes:
            tensor = pb_utils.Tensor(self.output_name, probs[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += size
        return responses

    def finalize(self):
        self.module = None
