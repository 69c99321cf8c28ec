"""Write a model bundle as a Triton model repository.

Three variants share one interface (``steel_ensemble`` and ``steel_cascade``: FRAMES uint8
[B, 256, 1600] -> PROBS FP32 [B, C], PIXEL_COUNTS INT64 [B, C], RLE STRING [B, C]):

* ``fmt="openvino"`` (the committed ``triton_models/``, served by the embedded server, CPU only):
  the classifier and segmenter are python-backend models running the ONNX networks with
  OpenVINO (``steelcore.cpu_runtime``), precision "auto" (bf16 where the CPU has it);
* ``fmt="torchscript"``: the same python-backend models running TorchScript (eager torch's
  exact results), KIND_CPU by default.
* ``fmt="onnx"`` (the GPU production repository used by deploy/): the networks are
  ``onnxruntime_onnx`` models with a dynamic batch dimension, KIND_GPU by default.

In both, ``postprocess`` (gating, pixel thresholds, minimum areas, RLE) and the BLS
``steel_cascade`` are python models, and ``steel_ensemble`` chains classifier + segmenter ->
postprocess.

Model versions (issue 16): a repository may hold several bundles at once, bundle version V in the
``V/`` folder of classifier, segmenter, postprocess and steel_cascade (stack.model_lifecycle copies
them in and rewrites ``version_policy``). ``postprocess`` and ``steel_cascade`` answer
``MODEL_VERSION`` (their own version), so every answer says which bundle judged the frame;
``steel_ensemble`` (one version, ``1/``) pins its steps to the production version and passes
``MODEL_VERSION`` through; steel_cascade version V calls the other models at version V. A fresh
export holds version 1 only. The networks are exported wrapped in :class:`FramesToProbs`, which does what
``training.inference.predict_probs`` does around them (uint8 -> [0, 1] float, sigmoid), so
served probabilities equal in-process ones. The bundle's ``postprocess.json`` is copied into the
version folders of ``postprocess`` and ``steel_cascade``: thresholds live in the bundle only.

The ``model.py`` files are the committed ones in ``steelcore.paths.TRITON_REPOSITORY``; this
module writes every ``config.pbtxt`` and the exported networks, so
``steel export --model default --format torchscript --repo triton_models`` regenerates the
committed repository in place.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from steelcore.paths import TRITON_REPOSITORY
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

if TYPE_CHECKING:
    from steelcore.model_bundle import ModelBundle

Format = Literal["torchscript", "onnx", "openvino"]
Kind = Literal["cpu", "gpu"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx", "openvino")
# Formats whose networks run in the generic python-backend model.py (segmenter/1/model.py).
PYTHON_NETWORK_FORMATS: tuple[str, ...] = ("torchscript", "openvino")
KINDS: tuple[str, ...] = ("cpu", "gpu")

ENSEMBLE = "steel_ensemble"
CASCADE = "steel_cascade"
CLASSIFIER = "classifier"
SEGMENTER = "segmenter"
POSTPROCESS = "postprocess"
MODELS: tuple[str, ...] = (CLASSIFIER, SEGMENTER, POSTPROCESS, ENSEMBLE, CASCADE)
VERSION = "1"
# The output naming the version that judged each frame: INT32 [B, 1].
VERSION_OUTPUT = "MODEL_VERSION"
# The models that hold one version per registered bundle (not the ensemble, which has one version).
VERSIONED_MODELS: tuple[str, ...] = (CLASSIFIER, SEGMENTER, POSTPROCESS, CASCADE)
POSTPROCESS_FILE = "postprocess.json"
TORCHSCRIPT_FILES = {CLASSIFIER: "classifier.pt", SEGMENTER: "segmenter.pt"}
ONNX_FILE = "model.onnx"  # the onnxruntime backend's default file name
MANIFEST = "repository.json"
ONNX_OPSET = 17


@dataclass(frozen=True)
class ServingLayout:
    """Batching and parallelism of a repository; the defaults of every ``config.pbtxt``.

    On the 2-core CPU machine the classifier and segmenter get one instance with one torch thread
    each: the ensemble runs them side by side, so that is two threads on two cores. Oversubscribing
    (2 instances x 2 threads) cut a segmenter's throughput to a quarter.
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
    postprocess_instances: int = 1
    # Two cascade instances (numpy only, no torch) keep two batches in flight, so the classifier
    # of one overlaps the segmenter of the other as in the ensemble's pipeline.
    cascade_instances: int = 2
    # OpenVINO's CPU inference precision (steelcore.cpu_runtime.PRECISIONS) for fmt="openvino".
    precision: str = "auto"


CPU_LAYOUT = ServingLayout()
# GPU servers have many cores for post-processing (connected components and RLE per frame).
GPU_LAYOUT = ServingLayout(postprocess_instances=4, cascade_instances=4)


# --- exported networks ----------------------------------------------------------------------------
class FramesToProbs(torch.nn.Module):
    """uint8 frames [B, H, W] -> sigmoid probabilities, as ``predict_probs`` computes them."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.unsqueeze(1).float().div(255.0)
        return torch.sigmoid(self.net(x)).float()


def export_torchscript_network(network: torch.nn.Module, path: Path) -> Path:
    """Script ``network`` wrapped in FramesToProbs and save it (CPU weights) to ``path``."""
    module = FramesToProbs(network).cpu().eval()
    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated; it is still what lets the python backend
        # load a network with torch.jit.load, without the training code.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return path


def export_onnx_network(network: torch.nn.Module, path: Path, input_name: str, output_name: str) -> Path:
    """Export ``network`` wrapped in FramesToProbs to ONNX with a dynamic batch dimension."""
    module = FramesToProbs(network).cpu().eval()
    example = torch.zeros((1, FRAME_HEIGHT, FRAME_WIDTH), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript-based exporter (dynamo=False) needs no onnxscript; torch flags it deprecated.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return path


# --- config.pbtxt -----------------------------------------------------------------------------
def _tensor(name: str, dtype: str, dims: Iterable[int], *, optional: bool = False) -> str:
    dims_text = ", ".join(str(d) for d in dims)
    extra = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {dims_text} ]{extra} }}'


def _block(key: str, items: list[str]) -> str:
    return f"{key} [\n" + ",\n".join(items) + "\n]\n"


def _parameters(values: dict[str, str]) -> str:
    return "".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in values.items()
    )


def version_policy(versions: Iterable[int]) -> str:
    """The ``version_policy`` line serving exactly ``versions`` (stack.model_lifecycle rewrites it)."""
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def _header(name: str, max_batch: int, backend: str | None = None, platform: str | None = None) -> str:
    lines = [f'name: "{name}"']
    if backend:
        lines.append(f'backend: "{backend}"')
    if platform:
        lines.append(f'platform: "{platform}"')
    lines.append(f"max_batch_size: {max_batch}")
    # Explicit versions: a newer folder copied in (a shadow candidate) is not served until listed.
    lines.append(version_policy([int(VERSION)]))
    return "\n".join(lines) + "\n"


def _scheduling(layout: ServingLayout, count: int, kind: str, queue_delay_us: int) -> str:
    preferred = ", ".join(str(b) for b in layout.preferred_batch_sizes if b <= layout.max_batch_size)
    return (
        f"instance_group [ {{ count: {count} kind: {kind} }} ]\n"
        f"dynamic_batching {{ preferred_batch_size: [ {preferred} ] "
        f"max_queue_delay_microseconds: {queue_delay_us} }}\n"
    )


def _frames_input() -> str:
    return _block("input", [_tensor("FRAMES", "TYPE_UINT8", (FRAME_HEIGHT, FRAME_WIDTH))])


def _result_outputs(num_classes: int) -> str:
    return _block(
        "output",
        [
            _tensor("PROBS", "TYPE_FP32", (num_classes,)),
            _tensor("PIXEL_COUNTS", "TYPE_INT64", (num_classes,)),
            _tensor("RLE", "TYPE_STRING", (num_classes,)),
            _tensor(VERSION_OUTPUT, "TYPE_INT32", (1,)),
        ],
    )


def network_config(name: str, num_classes: int, fmt: Format, kind: Kind, layout: ServingLayout) -> str:
    output_name, dims = (
        ("CLS_PROBS", (num_classes,))
        if name == CLASSIFIER
        else ("SEG_PROBS", (num_classes, FRAME_HEIGHT, FRAME_WIDTH))
    )
    instance_kind = "KIND_GPU" if kind == "gpu" else "KIND_CPU"
    if fmt in PYTHON_NETWORK_FORMATS:
        text = _header(name, layout.max_batch_size, backend="python")
    else:
        text = _header(name, layout.max_batch_size, platform="onnxruntime_onnx")
    text += _frames_input()
    text += _block("output", [_tensor(output_name, "TYPE_FP32", dims)])
    text += _scheduling(layout, layout.network_instances, instance_kind, layout.network_queue_delay_us)
    if fmt == "torchscript":
        text += _parameters(
            {
                "model_file": TORCHSCRIPT_FILES[name],
                "input_name": "FRAMES",
                "output_name": output_name,
                "torch_threads": str(layout.torch_threads),
            }
        )
    elif fmt == "openvino":
        text += _parameters(
            {
                "runtime": "openvino",
                "model_file": ONNX_FILE,
                "input_name": "FRAMES",
                "output_name": output_name,
                "threads": str(layout.torch_threads),
                "precision": layout.precision,
            }
        )
    else:
        text += _parameters({"intra_op_thread_count": str(layout.torch_threads)})
    return text


def postprocess_config(num_classes: int, has_classifier: bool, layout: ServingLayout) -> str:
    text = _header(POSTPROCESS, layout.max_batch_size, backend="python")
    inputs = [_tensor("SEG_PROBS", "TYPE_FP32", (num_classes, FRAME_HEIGHT, FRAME_WIDTH))]
    # Optional so that a bundle without a classifier serves the same ensemble interface.
    inputs.insert(0, _tensor("CLS_PROBS", "TYPE_FP32", (num_classes,), optional=not has_classifier))
    text += _block("input", inputs)
    text += _result_outputs(num_classes)
    text += _scheduling(layout, layout.postprocess_instances, "KIND_CPU", layout.postprocess_queue_delay_us)
    return text


def ensemble_config(
    num_classes: int, has_classifier: bool, layout: ServingLayout, production: int = int(VERSION)
) -> str:
    """The ensemble with every step pinned to version ``production`` (never -1, "latest": with a
    shadow loaded beside production, the newest version is the candidate)."""
    text = _header(ENSEMBLE, layout.max_batch_size, platform="ensemble")
    text += _frames_input()
    text += _result_outputs(num_classes)
    steps = []
    if has_classifier:
        steps.append(
            f'    {{ model_name: "{CLASSIFIER}" model_version: {production}\n'
            '      input_map { key: "FRAMES" value: "FRAMES" }\n'
            '      output_map { key: "CLS_PROBS" value: "cls_probs" } }'
        )
    steps.append(
        f'    {{ model_name: "{SEGMENTER}" model_version: {production}\n'
        '      input_map { key: "FRAMES" value: "FRAMES" }\n'
        '      output_map { key: "SEG_PROBS" value: "seg_probs" } }'
    )
    cls_input = '      input_map { key: "CLS_PROBS" value: "cls_probs" }\n' if has_classifier else ""
    steps.append(
        f'    {{ model_name: "{POSTPROCESS}" model_version: {production}\n'
        f"{cls_input}"
        '      input_map { key: "SEG_PROBS" value: "seg_probs" }\n'
        '      output_map { key: "PROBS" value: "PROBS" }\n'
        '      output_map { key: "PIXEL_COUNTS" value: "PIXEL_COUNTS" }\n'
        '      output_map { key: "RLE" value: "RLE" }\n'
        f'      output_map {{ key: "{VERSION_OUTPUT}" value: "{VERSION_OUTPUT}" }} }}'
    )
    text += "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
    return text


def cascade_config(num_classes: int, has_classifier: bool, layout: ServingLayout) -> str:
    text = _header(CASCADE, layout.max_batch_size, backend="python")
    text += _frames_input()
    text += _result_outputs(num_classes)
    text += _scheduling(layout, layout.cascade_instances, "KIND_CPU", layout.cascade_queue_delay_us)
    text += _parameters(
        {
            "classifier_model": CLASSIFIER if has_classifier else "",
            "segmenter_model": SEGMENTER,
            "postprocess_model": POSTPROCESS,
        }
    )
    return text


# --- the repository -------------------------------------------------------------------------------
def _templates(source: Path, has_classifier: bool, fmt: Format) -> dict[str, str]:
    """model.py text per python model, read before anything is written (source may be out_dir)."""
    python_models = [POSTPROCESS, CASCADE]
    if fmt in PYTHON_NETWORK_FORMATS:
        python_models += [SEGMENTER] + ([CLASSIFIER] if has_classifier else [])
    texts = {}
    for name in python_models:
        # classifier and segmenter run the same generic network model.py, kept in segmenter/
        # (a bundle without a classifier writes no classifier/ folder).
        template = source / (SEGMENTER if name == CLASSIFIER else name) / VERSION / "model.py"
        if not template.is_file():
            raise FileNotFoundError(f"model.py template {template} is missing")
        texts[name] = template.read_text()
    return texts


def _write_models(
    loaded: ModelBundle, out: Path, fmt: Format, kind: Kind, layout: ServingLayout, texts: dict[str, str]
) -> None:
    """Every model folder of the repository into ``out`` (an empty folder)."""
    num_classes = loaded.num_classes
    has_classifier = loaded.classifier is not None
    for name in MODELS:
        if name != CLASSIFIER or has_classifier:
            (out / name / VERSION).mkdir(parents=True)
    for name, text in texts.items():
        (out / name / VERSION / "model.py").write_text(text)
    # An ensemble's version folder holds no file, but Triton needs it and git keeps no empty folder.
    (out / ENSEMBLE / VERSION / ".gitkeep").write_text("")

    networks = [(SEGMENTER, loaded.segmenter)]
    if loaded.classifier is not None:
        networks.insert(0, (CLASSIFIER, loaded.classifier))
    for name, network in networks:
        (out / name / "config.pbtxt").write_text(network_config(name, num_classes, fmt, kind, layout))
        if fmt == "torchscript":
            export_torchscript_network(network, out / name / VERSION / TORCHSCRIPT_FILES[name])
        else:  # onnx (the onnxruntime backend) and openvino (the python model) read the same file
            output_name = "CLS_PROBS" if name == CLASSIFIER else "SEG_PROBS"
            export_onnx_network(network, out / name / VERSION / ONNX_FILE, "FRAMES", output_name)

    params = json.dumps(loaded.postprocess.to_json(), indent=2) + "\n"
    for name in (POSTPROCESS, CASCADE):
        (out / name / VERSION / POSTPROCESS_FILE).write_text(params)
    (out / POSTPROCESS / "config.pbtxt").write_text(postprocess_config(num_classes, has_classifier, layout))
    (out / ENSEMBLE / "config.pbtxt").write_text(ensemble_config(num_classes, has_classifier, layout))
    (out / CASCADE / "config.pbtxt").write_text(cascade_config(num_classes, has_classifier, layout))


def write_repository(
    bundle: ModelBundle | str | Path,
    out_dir: str | Path,
    fmt: Format = "torchscript",
    kind: Kind | None = None,
    *,
    layout: ServingLayout | None = None,
    templates: Path = TRITON_REPOSITORY,
) -> Path:
    """Write the Triton repository of ``bundle`` (a loaded bundle, a name or a path) to ``out_dir``.

    ``kind`` defaults to "cpu" for TorchScript and OpenVINO and "gpu" for ONNX. Only the five model folders of
    the repository are replaced; anything else in ``out_dir`` is left alone. Returns ``out_dir``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    kind = kind or ("gpu" if fmt == "onnx" else "cpu")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if fmt == "openvino" and kind != "cpu":
        raise ValueError("the openvino format serves on the CPU only: use --format onnx for a GPU")
    if not isinstance(bundle, str | Path):
        loaded = bundle
    else:
        from steelcore.model_bundle import load_bundle

        loaded = load_bundle(bundle)
    layout = layout or (GPU_LAYOUT if kind == "gpu" else CPU_LAYOUT)
    out = Path(out_dir)
    has_classifier = loaded.classifier is not None
    texts = _templates(Path(templates), has_classifier, fmt)

    out.mkdir(parents=True, exist_ok=True)
    # Build next to out_dir, then swap the model folders in: a failed export (a network that does
    # not script, a full disk) leaves the previous repository intact.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-writing-", dir=out.parent))
    try:
        _write_models(loaded, staging, fmt, kind, layout, texts)
        for name in MODELS:
            if (out / name).exists():
                shutil.rmtree(out / name)
            if (staging / name).exists():
                (staging / name).rename(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = {
        "bundle": loaded.name,
        "bundle_path": _display_path(loaded.path),
        "class_ids": loaded.class_ids,
        "format": fmt,
        "kind": kind,
        "models": [n for n in MODELS if (out / n).is_dir()],
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _display_path(path: Path) -> str:
    """The bundle's path relative to the repository when it lies inside it: the committed
    repository.json then reads the same on every checkout."""
    from steelcore.paths import REPO_ROOT

    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(resolved)
