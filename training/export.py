"""`steel export`: a model bundle's networks as TorchScript or ONNX files, or as a Triton model repository.

Every export is checked: the exported file is loaded back and run on a random batch of another size than
the example it was traced with, and the largest absolute difference to the eager model is reported.

    steel export --model default --format onnx --out exported/
    steel export --model default --format openvino --repo triton_models
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from steelcore import exit_codes
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
# --repo also writes the CPU repository whose python models run the ONNX networks with OpenVINO.
REPO_FORMATS = (*FORMATS, "openvino")
SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
# Tensor names inside exported files (the Triton configs refer to them).
INPUT_NAME = "frames"
OUTPUT_NAME = "logits"
# The one opset of every ONNX export (the bundle's files and the Triton repository's networks).
ONNX_OPSET = 17
# Largest |exported - eager| accepted on logits; float32 reordering stays orders of magnitude below it.
MAX_ABS_DIFF = 1e-3


def script_module(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(module)``, without the deprecation warning torch 2.13 gives it."""
    import torch

    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated; Triton's PyTorch (libtorch) backend and the python
        # backend's torch.jit.load still load only it, without the training code.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def write_onnx(
    module: nn.Module,
    example: torch.Tensor,
    target: str | io.BytesIO,
    input_name: str,
    output_name: str,
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """``torch.onnx.export`` at ONNX_OPSET with the TorchScript-based exporter (dynamo=False): the
    torch.export-based one needs the onnxscript package, which the project does not install."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter warns that it is legacy; that choice is made and explained above.
        warnings.simplefilter("ignore", DeprecationWarning)
        # An export freezes the frame size (the repository's dims are fixed): branches on sizes,
        # such as ResUNet.probabilities leaving out a crop that keeps everything, are meant to freeze.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            target,
            opset_version=ONNX_OPSET,
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
        )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _check_input(model: nn.Module, example_shape: tuple[int, ...]) -> torch.Tensor:
    """A random batch one larger than the example (so a fixed batch size would show) on the model's device."""
    import torch

    if len(example_shape) != 4 or min(example_shape) < 1:
        raise ValueError(f"example_shape must be (batch, channels, height, width), got {example_shape}")
    batch, channels, height, width = example_shape
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    return torch.rand((batch + 1, channels, height, width), generator=generator).to(device)


def export_torchscript(
    model: nn.Module, path: str | Path, example_shape: tuple[int, int, int, int], freeze: bool = True
) -> float:
    """Script ``model`` (frozen: batch norm folded, weights inlined) to ``path``; returns max |TS - eager|."""
    import torch

    path = Path(path)
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated; Triton's PyTorch (libtorch) backend still loads only it.
        warnings.simplefilter("ignore", DeprecationWarning)
        check = _check_input(model, example_shape)
        scripted = script_module(model)
        if freeze:
            scripted = torch.jit.freeze(scripted)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path))
        loaded = torch.jit.load(str(path), map_location=check.device)
        return float((loaded(check) - model(check)).abs().max())


def export_onnx(model: nn.Module, path: str | Path, example_shape: tuple[int, int, int, int]) -> float:
    """Export ``model`` to ONNX at ``path``, dynamic batch, height and width; returns max |ORT - eager|."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    path = Path(path)
    with _eval_mode(model), torch.no_grad():
        check = _check_input(model, example_shape)
        example = torch.rand(example_shape, device=check.device)
        reference = model(check).cpu().numpy()
        axes = {0: "batch", 2: "height", 3: "width"}
        # Segmenter logits keep the image axes; classifier logits are [batch, classes].
        output_axes = axes if reference.ndim == 4 else {0: "batch"}
        buffer = io.BytesIO()
        write_onnx(
            model, example, buffer, INPUT_NAME, OUTPUT_NAME, {INPUT_NAME: axes, OUTPUT_NAME: output_axes}
        )
        proto = onnx.load_from_string(buffer.getvalue())
        onnx.checker.check_model(proto)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (exported,) = session.run([OUTPUT_NAME], {INPUT_NAME: check.cpu().numpy()})
        return float(np.abs(exported - reference).max())


def export_bundle(bundle_name: str | Path, fmt: str, out_dir: Path) -> dict[str, float]:
    """Export the bundle's classifier (if any) and segmenter into ``out_dir``; returns max |diff| per net."""
    from training.model_bundle import load_bundle

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    bundle = load_bundle(bundle_name)
    example_shape = (2, 1, FRAME_HEIGHT, FRAME_WIDTH)
    exporter = export_torchscript if fmt == "torchscript" else export_onnx
    out_dir.mkdir(parents=True, exist_ok=True)
    diffs: dict[str, float] = {}
    for task, model in (("classifier", bundle.classifier), ("segmenter", bundle.segmenter)):
        if model is None:
            continue
        # Exporting mutates nothing, but a copy keeps the bundle's modules untouched by tracing hooks.
        diffs[task] = exporter(copy.deepcopy(model), out_dir / f"{task}{SUFFIX[fmt]}", example_shape)
    manifest = {
        "bundle": bundle.name,
        "bundle_path": str(bundle.path),
        "format": fmt,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "files": {task: f"{task}{SUFFIX[fmt]}" for task in diffs},
        "max_abs_diff": diffs,
    }
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return diffs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="bundle name (models/NAME) or path; default: settings")
    parser.add_argument(
        "--format",
        choices=REPO_FORMATS,
        default="onnx",
        help="file format (default onnx); openvino (--repo only): the CPU repository of triton_models/",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write classifier/segmenter files and export.json here")
    target.add_argument("--repo", type=Path, help="write a Triton model repository here")
    parser.add_argument(
        "--kind",
        choices=("cpu", "gpu"),
        default=None,
        help="Triton instance kind with --repo (default: the writer's, cpu for torchscript, gpu for onnx)",
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="openvino --repo: serve the int8 networks of `steel quantize` (default: when the bundle "
        "has them for its current weights; --int8 requires them, --no-int8 serves full precision)",
    )


def run(args: argparse.Namespace) -> int:
    from steelcore.settings import get_settings

    model_name = args.model or get_settings().model_name
    try:
        if args.repo is not None:
            return _write_repository(model_name, args.repo, args.format, args.kind, args.int8)
        if args.format not in FORMATS:
            raise ValueError(f"--format {args.format} writes a Triton repository (--repo); --out takes onnx")
        diffs = export_bundle(model_name, args.format, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"steel export: {exc}")
        return exit_codes.BAD_INPUT
    print(f"{'network':<12} {'max |exported - eager|':>24}  file")
    for task, diff in diffs.items():
        print(f"{task:<12} {diff:>24.3g}  {args.out / (task + SUFFIX[args.format])}")
    worst = max(diffs.values())
    if worst > MAX_ABS_DIFF:
        print(f"FAILED: exported outputs differ from eager by {worst:.3g} > {MAX_ABS_DIFF}")
        return exit_codes.FAILURE
    return exit_codes.OK


def _write_repository(model_name: str, out_dir: Path, fmt: str, kind: str | None, int8: bool | None) -> int:
    from training.model_bundle import load_bundle

    try:
        from training.triton_export import MANIFEST, write_repository
    except ImportError as exc:
        print(f"steel export --repo: cannot import training.triton_export (the repository writer): {exc}")
        return exit_codes.FAILURE
    bundle = load_bundle(model_name)
    write_repository(bundle, out_dir, fmt, kind, int8=int8)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    served = f"{fmt}, int8 {' + '.join(manifest['int8'])}" if manifest.get("int8") else fmt
    print(f"wrote Triton repository for {bundle.name} ({served}, {kind or 'default kind'}) to {out_dir}")
    return exit_codes.OK
