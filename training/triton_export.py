"""Write a model bundle as a Triton model repository.

Three variants share one interface (``steel_ensemble`` and ``steel_cascade``: FRAMES uint8
[B, 256, 1600] -> PROBS FP32 [B, C], PIXEL_COUNTS INT64 [B, C], RLE STRING [B, C]):

* ``fmt="openvino"`` (the committed ``triton_models/``, served by the embedded server, CPU only):
  the classifier and segmenter are python-backend models running the ONNX networks with
  OpenVINO (``steelcore.cpu_runtime``), precision "auto" (bf16 where the CPU has it), and the
  bundle's int8 networks (``training.quantize``) beside them when it has them;
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
served probabilities equal in-process ones; the segmenter in :class:`FramesToProbCodes`, whose
uint8 codes (round(255 p)) are within 0.5/255 of them. The bundle's ``postprocess.json`` is copied into the
version folders of ``postprocess`` and ``steel_cascade``: thresholds live in the bundle only.

The ``model.py`` files are the committed ones in ``steelcore.paths.TRITON_REPOSITORY`` (the
classifier's is a link to the segmenter's: Triton wants a model.py in each model's version folder,
and a folder of shared code at the repository root would be taken for a model); this module
writes every ``config.pbtxt`` (built by ``training.triton_config``) and the exported networks, so
``steel export --model default --format torchscript --repo triton_models`` regenerates the
committed repository in place.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from steelcore.paths import TRITON_REPOSITORY
from steelcore.postprocess import PROBABILITY_CODES
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from steelcore.triton.model_names import MANIFEST, MODELS
from training.export import script_module, write_onnx
from training.networks.resunet import ResUNet
from training.triton_config import (
    CASCADE,
    CLASSIFIER,
    CPU_LAYOUT,
    ENSEMBLE,
    FORMATS,
    GPU_LAYOUT,
    INT8_FILE,
    KINDS,
    ONNX_FILE,
    POSTPROCESS,
    PYTHON_NETWORK_FORMATS,
    SEGMENTER,
    TORCHSCRIPT_FILES,
    VERSION,
    Format,
    Kind,
    ServingLayout,
    cascade_config,
    ensemble_config,
    network_config,
    postprocess_config,
)

if TYPE_CHECKING:
    from training.model_bundle import ModelBundle

POSTPROCESS_FILE = "postprocess.json"


# --- exported networks ----------------------------------------------------------------------------
class FramesToProbs(torch.nn.Module):
    """uint8 frames [B, H, W] -> sigmoid probabilities, as ``predict_probs`` computes them."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.unsqueeze(1).float().div(255.0)
        return torch.sigmoid(self.net(x)).float()


class FramesToProbCodes(torch.nn.Module):
    """uint8 frames [B, H, W] -> the segmenter's probabilities as uint8 codes, round(255 p).

    A quarter of the bytes of float32 maps (1.6 instead of 6.5 MB per frame) for the runtime to
    write and Triton to copy to ``postprocess``, which thresholds codes directly
    (``steelcore.postprocess``); a code is within 0.5/255 of the probability. Sigmoid and rounding
    come before the pixel shuffle (``ResUNet.probabilities``), where the runtime fuses them.
    """

    def __init__(self, net: ResUNet) -> None:
        super().__init__()
        self.net = net
        self.codes = int(PROBABILITY_CODES)  # an attribute: TorchScript reads no module globals

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.unsqueeze(1).float().div(255.0)
        return self.net.probabilities(x, self.codes)


def served_module(network: torch.nn.Module) -> torch.nn.Module:
    """The network as Triton serves it: a segmenter answers probability codes, a classifier probabilities."""
    if isinstance(network, ResUNet):
        return FramesToProbCodes(network)
    return FramesToProbs(network)


def export_torchscript_network(network: torch.nn.Module, path: Path) -> Path:
    """Script ``network`` as ``served_module`` wraps it and save it (CPU weights) to ``path``."""
    scripted = script_module(served_module(network).cpu().eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return path


def export_onnx_network(network: torch.nn.Module, path: Path, input_name: str, output_name: str) -> Path:
    """Export ``network`` as ``served_module`` wraps it to ONNX with a dynamic batch dimension."""
    module = served_module(network).cpu().eval()
    example = torch.zeros((1, FRAME_HEIGHT, FRAME_WIDTH), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    write_onnx(module, example, str(path), input_name, output_name, axes)
    return path


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
    loaded: ModelBundle,
    out: Path,
    fmt: Format,
    kind: Kind,
    layout: ServingLayout,
    texts: dict[str, str],
    int8: dict[str, Path],
) -> None:
    """Every model folder of the repository into ``out`` (an empty folder); ``int8``: the bundle's
    int8 network files to serve, per network."""
    num_classes = loaded.num_classes
    has_classifier = loaded.classifier is not None
    for name in MODELS:
        if name != CLASSIFIER or has_classifier:
            (out / name / VERSION).mkdir(parents=True)
    for name, text in texts.items():
        if name == CLASSIFIER:
            # One generic network model.py serves both networks: a relative link keeps it one file
            # here and in git; shutil.copytree (the serving copy, a new model version) copies the file.
            (out / name / VERSION / "model.py").symlink_to(Path("..", "..", SEGMENTER, VERSION, "model.py"))
        else:
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
        if name in int8:
            # The IR's weights live in the .bin of the same stem, which OpenVINO finds beside it.
            for suffix in (".xml", ".bin"):
                target = (out / name / VERSION / INT8_FILE).with_suffix(suffix)
                shutil.copyfile(int8[name].with_suffix(suffix), target)

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
    int8: bool | None = None,
) -> Path:
    """Write the Triton repository of ``bundle`` (a loaded bundle, a name or a path) to ``out_dir``.

    ``kind`` defaults to "cpu" for TorchScript and OpenVINO and "gpu" for ONNX. ``int8`` (OpenVINO
    only): serve the networks ``steel quantize`` wrote into the bundle; None does so when the bundle
    has them for its current weights, True requires them. Only the five model folders of
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
        from training.model_bundle import load_bundle

        loaded = load_bundle(bundle)
    layout = layout or (GPU_LAYOUT if kind == "gpu" else CPU_LAYOUT)
    out = Path(out_dir)
    has_classifier = loaded.classifier is not None
    texts = _templates(Path(templates), has_classifier, fmt)
    int8_networks = _int8_networks(loaded, fmt, int8)

    out.mkdir(parents=True, exist_ok=True)
    # Build next to out_dir, then swap the model folders in: a failed export (a network that does
    # not script, a full disk) leaves the previous repository intact.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-writing-", dir=out.parent))
    try:
        _write_models(loaded, staging, fmt, kind, layout, texts, int8_networks)
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
        "int8": sorted(int8_networks),
        "models": [n for n in MODELS if (out / n).is_dir()],
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _int8_networks(loaded: ModelBundle, fmt: Format, int8: bool | None) -> dict[str, Path]:
    from training.openvino_bundle import INT8, serving_precision
    from training.quantize import load_int8_files

    if int8 is None:
        int8 = fmt == "openvino" and serving_precision(loaded) == INT8
    if not int8:
        return {}
    if fmt != "openvino":
        raise ValueError("int8 networks are served by the openvino format only")
    return load_int8_files(loaded.path)


def _display_path(path: Path) -> str:
    """The bundle's path relative to the repository when it lies inside it: the committed
    repository.json then reads the same on every checkout."""
    from steelcore.paths import REPO_ROOT

    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(resolved)
