"""Triton python-backend model running one exported network on uint8 frames.

The same file serves ``classifier`` and ``segmenter`` (classifier/1/model.py is a relative link to
segmenter/1/model.py; ``training/triton_export.py`` writes it so): the config's parameters name the
runtime and its file (written beside this file by ``training/triton_export.py``), the input and
output tensors, and the thread count. Two runtimes:

* ``runtime: openvino`` (the committed CPU repository): ``model.onnx`` compiled by OpenVINO
  through ``steelcore.cpu_runtime`` (precision from the ``precision`` parameter; this stub then
  imports no torch, about 400 MB less per stub), or the version's int8 network (``int8_file``,
  OpenVINO IR written by ``steel quantize``) where the export put one;
* ``runtime: torchscript`` (the default when the parameter is absent): a TorchScript file.

Either network takes uint8 frames [B, H, W] and returns sigmoid probabilities, the
preprocessing of ``training.inference.predict_probs``, so served and in-process outputs agree.

Follows the python_backend examples: the config is parsed once in ``initialize``, the model is
loaded and warmed up once; ``execute`` concatenates the requests of a dynamic batch, runs one
forward under ``inference_mode``, splits the result back and returns exactly one response per
request, a failure becoming an error response for the requests it affected.
"""

import json
from pathlib import Path

import numpy as np
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
        self.runtime = _parameter(config, "runtime", "torchscript")
        # Keep (instances x threads) within the machine's cores: oversubscribing two cores cut
        # throughput to a quarter.
        threads = int(_parameter(config, "threads", _parameter(config, "torch_threads", "1")))
        self.input_name = _parameter(config, "input_name")
        self.output_name = _parameter(config, "output_name")
        output = next(o for o in config["output"] if o["name"] == self.output_name)
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        model_file = version_dir / _parameter(config, "model_file")
        # A version exported with its int8 networks (`steel quantize`) serves those; other versions
        # of the same model keep the full-precision file.
        int8_file = _parameter(config, "int8_file", "")
        if self.runtime == "openvino" and int8_file and (version_dir / int8_file).is_file():
            model_file = version_dir / int8_file
        if not model_file.is_file():
            raise pb_utils.TritonModelException(
                f"{model_file} is missing: write the repository with "
                "`steel export --model NAME --format openvino|torchscript --repo DIR`"
            )
        input_dims = next(i for i in config["input"] if i["name"] == self.input_name)["dims"]
        warmup = np.zeros((1, *[int(d) for d in input_dims]), dtype=np.uint8)
        if self.runtime == "openvino":
            from steelcore.cpu_runtime import OpenVINONetwork

            self.network = OpenVINONetwork(model_file, threads, _parameter(config, "precision", "auto"))
        elif self.runtime == "torchscript":
            self.network = _TorchScriptNetwork(model_file, threads, args)
        else:
            raise pb_utils.TritonModelException(f"unknown runtime {self.runtime!r}")
        self.network(warmup)

    def execute(self, requests):
        try:
            frames = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
            sizes = [f.shape[0] for f in frames]
            batch = frames[0] if len(frames) == 1 else np.concatenate(frames)
            probs = self.network(batch).astype(self.output_dtype, copy=False)
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
        self.network = None


class _TorchScriptNetwork:
    """A TorchScript network on the instance's device; torch is imported only for this runtime."""

    def __init__(self, model_file, threads, args):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        try:  # inter-op threads can only be set once per process
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        if args.get("model_instance_kind") == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
        self.module = torch.jit.load(str(model_file), map_location=self.device).eval()

    def __call__(self, frames):
        batch = self.torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        with self.torch.inference_mode():
            return self.module(batch).float().cpu().numpy()
