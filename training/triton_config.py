"""The ``config.pbtxt`` of each model in the Triton repository, built as Triton's own ``ModelConfig``.

Built from ``tritonclient``'s ``model_config_pb2`` so a misspelt field or a wrong type fails here
rather than when Triton loads the repository. ``stack.model_lifecycle`` edits the written text with
regular expressions (``version_policy: { ... }`` on one line, ``model_version: N`` in ensemble steps),
so :func:`config_text` keeps the version policy in that one-line form.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from steelcore.triton.inference_result import VERSION_OUTPUT
from steelcore.triton.model_names import (
    CASCADE,
    CLASSIFIER,
    ENSEMBLE,
    POSTPROCESS,
    SEGMENTER,
)

Format = Literal["torchscript", "onnx", "openvino"]
Kind = Literal["cpu", "gpu"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx", "openvino")
# Formats whose networks run in the generic python-backend model.py (segmenter/1/model.py).
PYTHON_NETWORK_FORMATS: tuple[str, ...] = ("torchscript", "openvino")
KINDS: tuple[str, ...] = ("cpu", "gpu")

VERSION = "1"
TORCHSCRIPT_FILES = {CLASSIFIER: "classifier.pt", SEGMENTER: "segmenter.pt"}
ONNX_FILE = "model.onnx"  # the onnxruntime backend's default file name
# A version folder's int8 network (training.quantize), OpenVINO IR: served instead of ONNX_FILE
# when present, so versions with and without it share one config.pbtxt (stack.lifecycle_repository).
INT8_FILE = "model.xml"


@dataclass(frozen=True)
class ServingLayout:
    """Batching and parallelism of a repository; the defaults of every ``config.pbtxt``.

    On the 2-core CPU machine the classifier and segmenter get one instance each. TorchScript
    networks get one torch thread each: the ensemble runs them side by side, so that is two threads
    on two cores; oversubscribing (2 instances x 2 threads) cut a segmenter's throughput to a
    quarter. OpenVINO networks get a thread per core each (``openvino_threads``): its pool does
    not pin and the classifier is short, so the two rarely contend, and the segmenter, the
    ensemble's slowest step, runs at the in-process speed (`steel bench triton`, same machine and
    run: ensemble / in-process 0.99 at batch 1 and 1.04 at batch 8, against 0.75 and 0.77 with one
    thread each).
    """

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    # The networks wait up to 2 ms for concurrent requests to share a forward pass: a batch of 8
    # costs far less than 8 single frames, and 2 ms is small beside one pass (25-60 ms per frame
    # on CPU). Under load, requests queued behind a busy instance are batched without waiting.
    network_queue_delay_us: int = 2000
    # Post-processing works frame by frame and the cascade only routes, so waiting would add
    # latency for nothing; they still take whatever has queued up as one batch.
    postprocess_queue_delay_us: int = 0
    cascade_queue_delay_us: int = 0
    network_instances: int = 1
    torch_threads: int = 1
    openvino_threads: int = 2
    postprocess_instances: int = 1
    # Two cascade instances (numpy only, no torch) keep two batches in flight, so the classifier
    # of one overlaps the segmenter of the other as in the ensemble's pipeline.
    cascade_instances: int = 2
    # OpenVINO's CPU inference precision (steelcore.cpu_runtime.PRECISIONS) for fmt="openvino".
    precision: str = "auto"


CPU_LAYOUT = ServingLayout()
# GPU servers have many cores for post-processing (connected components and RLE per frame).
GPU_LAYOUT = ServingLayout(postprocess_instances=4, cascade_instances=4)


def version_policy(versions: Iterable[int]) -> str:
    """The ``version_policy`` line serving exactly ``versions`` (stack.model_lifecycle rewrites it)."""
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def config_text(config: pb.ModelConfig) -> str:
    """``config`` in protobuf text format, its version policy on one line after ``max_batch_size``."""
    rest = pb.ModelConfig()
    rest.CopyFrom(config)
    rest.ClearField("version_policy")
    lines = text_format.MessageToString(rest).splitlines()
    if config.HasField("version_policy"):
        policy = version_policy(config.version_policy.specific.versions)
        anchor = next(i for i, line in enumerate(lines) if line.startswith("max_batch_size:"))
        lines.insert(anchor + 1, policy)
    return "\n".join(lines) + "\n"


def _model(name: str, max_batch: int, *, backend: str = "", platform: str = "") -> pb.ModelConfig:
    config = pb.ModelConfig(name=name, backend=backend, platform=platform, max_batch_size=max_batch)
    # Explicit versions: a newer folder copied in (a shadow candidate) is not served until listed.
    config.version_policy.specific.versions.append(int(VERSION))
    return config


def _tensor(
    name: str, dtype: pb.DataType.ValueType, dims: Sequence[int], *, optional: bool = False
) -> dict[str, object]:
    fields: dict[str, object] = {"name": name, "data_type": dtype, "dims": list(dims)}
    if optional:  # ModelOutput has no such field
        fields["optional"] = True
    return fields


def _schedule(
    config: pb.ModelConfig, layout: ServingLayout, count: int, kind: str, queue_delay_us: int
) -> None:
    config.instance_group.add(count=count, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    config.dynamic_batching.preferred_batch_size.extend(
        b for b in layout.preferred_batch_sizes if b <= layout.max_batch_size
    )
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us


def _parameters(config: pb.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _frames_input(config: pb.ModelConfig) -> None:
    config.input.add(**_tensor("FRAMES", pb.TYPE_UINT8, (FRAME_HEIGHT, FRAME_WIDTH)))


def _result_outputs(config: pb.ModelConfig, num_classes: int) -> None:
    for name, dtype in (("PROBS", pb.TYPE_FP32), ("PIXEL_COUNTS", pb.TYPE_INT64), ("RLE", pb.TYPE_STRING)):
        config.output.add(**_tensor(name, dtype, (num_classes,)))
    config.output.add(**_tensor(VERSION_OUTPUT, pb.TYPE_INT32, (1,)))


def network_config(name: str, num_classes: int, fmt: Format, kind: Kind, layout: ServingLayout) -> str:
    # The segmenter answers uint8 probability codes (training.triton_export.FramesToProbCodes).
    output_name, dtype, dims = (
        ("CLS_PROBS", pb.TYPE_FP32, (num_classes,))
        if name == CLASSIFIER
        else ("SEG_PROBS", pb.TYPE_UINT8, (num_classes, FRAME_HEIGHT, FRAME_WIDTH))
    )
    instance_kind = "KIND_GPU" if kind == "gpu" else "KIND_CPU"
    if fmt in PYTHON_NETWORK_FORMATS:
        config = _model(name, layout.max_batch_size, backend="python")
    else:
        config = _model(name, layout.max_batch_size, platform="onnxruntime_onnx")
    _frames_input(config)
    config.output.add(**_tensor(output_name, dtype, dims))
    _schedule(config, layout, layout.network_instances, instance_kind, layout.network_queue_delay_us)
    if fmt == "torchscript":
        _parameters(
            config,
            {
                "model_file": TORCHSCRIPT_FILES[name],
                "input_name": "FRAMES",
                "output_name": output_name,
                "torch_threads": str(layout.torch_threads),
            },
        )
    elif fmt == "openvino":
        _parameters(
            config,
            {
                "runtime": "openvino",
                "model_file": ONNX_FILE,
                "int8_file": INT8_FILE,
                "input_name": "FRAMES",
                "output_name": output_name,
                "threads": str(layout.openvino_threads),
                "precision": layout.precision,
            },
        )
    else:
        _parameters(config, {"intra_op_thread_count": str(layout.torch_threads)})
    return config_text(config)


def postprocess_config(num_classes: int, has_classifier: bool, layout: ServingLayout) -> str:
    config = _model(POSTPROCESS, layout.max_batch_size, backend="python")
    # Optional so that a bundle without a classifier serves the same ensemble interface.
    config.input.add(**_tensor("CLS_PROBS", pb.TYPE_FP32, (num_classes,), optional=not has_classifier))
    config.input.add(**_tensor("SEG_PROBS", pb.TYPE_UINT8, (num_classes, FRAME_HEIGHT, FRAME_WIDTH)))
    _result_outputs(config, num_classes)
    _schedule(config, layout, layout.postprocess_instances, "KIND_CPU", layout.postprocess_queue_delay_us)
    return config_text(config)


def ensemble_config(
    num_classes: int, has_classifier: bool, layout: ServingLayout, production: int = int(VERSION)
) -> str:
    """The ensemble with every step pinned to version ``production`` (never -1, "latest": with a
    shadow loaded beside production, the newest version is the candidate)."""
    config = _model(ENSEMBLE, layout.max_batch_size, platform="ensemble")
    _frames_input(config)
    _result_outputs(config, num_classes)
    steps = config.ensemble_scheduling.step
    if has_classifier:
        step = steps.add(model_name=CLASSIFIER, model_version=production)
        step.input_map["FRAMES"] = "FRAMES"
        step.output_map["CLS_PROBS"] = "cls_probs"
    step = steps.add(model_name=SEGMENTER, model_version=production)
    step.input_map["FRAMES"] = "FRAMES"
    step.output_map["SEG_PROBS"] = "seg_probs"
    step = steps.add(model_name=POSTPROCESS, model_version=production)
    if has_classifier:
        step.input_map["CLS_PROBS"] = "cls_probs"
    step.input_map["SEG_PROBS"] = "seg_probs"
    for output in ("PROBS", "PIXEL_COUNTS", "RLE", VERSION_OUTPUT):
        step.output_map[output] = output
    return config_text(config)


def cascade_config(num_classes: int, has_classifier: bool, layout: ServingLayout) -> str:
    config = _model(CASCADE, layout.max_batch_size, backend="python")
    _frames_input(config)
    _result_outputs(config, num_classes)
    _schedule(config, layout, layout.cascade_instances, "KIND_CPU", layout.cascade_queue_delay_us)
    _parameters(
        config,
        {
            "classifier_model": CLASSIFIER if has_classifier else "",
            "segmenter_model": SEGMENTER,
            "postprocess_model": POSTPROCESS,
        },
    )
    return config_text(config)
