"""Int8 post-training quantisation of a bundle's networks for the CPU runtime (`steel quantize`).

OpenVINO's NNCF inserts calibrated int8 quantisers into the exported ONNX networks (by default the
segmenter only, see ``DEFAULT_NETWORKS``; uint8 frames in,
probabilities out, exactly as ``training.openvino_bundle`` and Triton's CPU repository run them) and
the result is saved as OpenVINO IR in the bundle's ``int8/`` folder, next to the weights it was made
from. Calibration frames are real frames from the folders given plus synthetic camera frames:
activation ranges then cover both the plant's texture and every defect class. The labels are not
used, so unlabelled frames serve as well as labelled ones.

``int8/quantization.json`` records the calibration sources and a digest of each weights file; a
bundle whose weights changed after quantising is refused (``load_int8_files``) instead of serving
networks that are no longer its own.

Why int8 and not only bf16: on a CPU without native bf16 (AVX2 only, the machines issue 14 was
measured on) OpenVINO falls back to f32, about 1.1-1.5x eager torch; int8 runs there too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steelcore import exit_codes
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

if TYPE_CHECKING:
    from training.model_bundle import ModelBundle

log = logging.getLogger(__name__)

INT8_DIR = "int8"
RECORD_FILE = "quantization.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_SYNTHETIC_FRAMES = 64
DEFAULT_MAX_REAL_FRAMES = 300  # MinMax ranges settle within a few hundred frames; more only costs time
SYNTHETIC_SEED = 7
NETWORK_FILES = {"classifier": "classifier.pt", "segmenter": "segmenter.pt"}
# The segmenter is 9/10 of the pair's time and int8 costs it no Dice; the classifier's gate
# probabilities moved up to 0.3 in int8 and cost 0.002 of mean Dice for 1.4 ms a frame, so by
# default it stays in full precision (docs/capacity.md has the measurements).
DEFAULT_NETWORKS = ("segmenter",)


class StaleQuantization(ValueError):
    """The bundle's int8 networks were made from weights it no longer holds."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights_digests(bundle_path: Path) -> dict[str, str]:
    files = {task: bundle_path / name for task, name in NETWORK_FILES.items()}
    return {task: _digest(path) for task, path in files.items() if path.is_file()}


def int8_files(bundle_path: Path) -> dict[str, Path]:
    """The bundle's int8 IR files per network ({} when it was never quantised)."""
    folder = Path(bundle_path) / INT8_DIR
    return {task: folder / f"{task}.xml" for task in NETWORK_FILES if (folder / f"{task}.xml").is_file()}


def load_int8_files(bundle_path: Path) -> dict[str, Path]:
    """``int8_files`` checked against the weights they were made from.

    FileNotFoundError when the bundle has none; StaleQuantization when its weights changed since.
    """
    bundle_path = Path(bundle_path)
    files = int8_files(bundle_path)
    record_path = bundle_path / INT8_DIR / RECORD_FILE
    if not files or not record_path.is_file():
        raise FileNotFoundError(
            f"bundle {bundle_path} has no int8 networks: run `steel quantize --model {bundle_path}`"
        )
    made_from = json.loads(record_path.read_text()).get("weights_sha256", {})
    if made_from != _weights_digests(bundle_path):
        raise StaleQuantization(
            f"the int8 networks of {bundle_path} were made from other weights than the bundle holds "
            f"now: run `steel quantize --model {bundle_path}` again"
        )
    return files


def real_frames(folders: list[Path], limit: int) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``limit`` frames of 256x1600 from the image files in ``folders`` (recursively, sorted),
    and what was skipped with its reason. A folder that does not exist is an error."""
    from training.datasets import read_gray

    files: list[Path] = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"calibration folder {folder} does not exist")
        files += sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    frames: list[np.ndarray] = []
    skipped: list[str] = []
    for path in files:
        if len(frames) >= limit:
            break
        try:
            image = read_gray(path)
        except ValueError as exc:
            skipped.append(str(exc))
            continue
        if image.shape != (FRAME_HEIGHT, FRAME_WIDTH):
            skipped.append(f"{path}: {image.shape[1]}x{image.shape[0]}, not {FRAME_WIDTH}x{FRAME_HEIGHT}")
            continue
        frames.append(image)
    return frames, skipped


def synthetic_frames(count: int, seed: int = SYNTHETIC_SEED) -> list[np.ndarray]:
    from producers.synthetic_camera import SyntheticCamera

    camera = SyntheticCamera(seed=seed)
    return [camera.frame(i).image for i in range(count)]


def quantize_bundle(
    bundle: ModelBundle,
    folders: list[Path],
    synthetic: int = DEFAULT_SYNTHETIC_FRAMES,
    max_real: int = DEFAULT_MAX_REAL_FRAMES,
    networks: tuple[str, ...] = DEFAULT_NETWORKS,
) -> dict[str, Any]:
    """Quantise ``networks`` of ``bundle`` into ``bundle.path/int8/``, replacing what was there once
    every network is done; returns the record written there."""
    import shutil

    import nncf
    import openvino as ov

    from training.openvino_bundle import export_onnx_networks

    unknown = set(networks) - set(NETWORK_FILES)
    if unknown or not networks:
        raise ValueError(f"networks must be some of {tuple(NETWORK_FILES)}, got {networks!r}")
    if "classifier" in networks and bundle.classifier is None:
        raise ValueError(f"bundle {bundle.name} has no classifier to quantise")
    real, skipped = real_frames(folders, max_real)
    for reason in skipped:
        log.warning("calibration: skipped %s", reason)
    frames = real + synthetic_frames(synthetic)
    if not frames:
        raise ValueError("no calibration frames: give --calibration folders or --synthetic N > 0")
    out = Path(bundle.path) / INT8_DIR
    core = ov.Core()
    # Written beside the bundle's int8/ and swapped in at the end: a failed run leaves what was there.
    with tempfile.TemporaryDirectory(prefix=".int8-writing-", dir=bundle.path) as work:
        onnx_files = export_onnx_networks(bundle, Path(work))
        onnx_files = {task: path for task, path in onnx_files.items() if task in networks}
        staging = Path(work) / INT8_DIR
        staging.mkdir()
        for task, onnx_file in onnx_files.items():
            dataset = nncf.Dataset([frame[None] for frame in frames])
            quantized = nncf.quantize(core.read_model(str(onnx_file)), dataset, subset_size=len(frames))
            ov.save_model(quantized, str(staging / f"{task}.xml"))
        record = _record(bundle, folders, len(real), len(skipped), synthetic, sorted(onnx_files))
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    return record


def _record(
    bundle: ModelBundle, folders: list[Path], real: int, skipped: int, synthetic: int, networks: list[str]
) -> dict[str, Any]:
    import nncf
    import openvino as ov

    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "method": "nncf.quantize, post-training, its defaults (preset performance, fast bias correction)",
        "nncf": nncf.__version__,
        "openvino": ov.__version__,
        "calibration": {
            "folders": [str(f) for f in folders],
            "real_frames": real,
            "skipped": skipped,
            "synthetic_frames": synthetic,
            "synthetic_seed": SYNTHETIC_SEED,
        },
        "networks": networks,
        "weights_sha256": _weights_digests(Path(bundle.path)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="bundle name (models/NAME) or path; default: settings")
    parser.add_argument(
        "--calibration",
        type=Path,
        action="append",
        default=[],
        help="folder of real 1600x256 frames (searched recursively; labels not needed); repeatable",
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        default=DEFAULT_SYNTHETIC_FRAMES,
        help=f"synthetic camera frames added to the calibration set (default {DEFAULT_SYNTHETIC_FRAMES})",
    )
    parser.add_argument(
        "--networks",
        default=",".join(DEFAULT_NETWORKS),
        help="comma-separated networks to quantise: segmenter (default), classifier; the others "
        "keep full precision",
    )
    parser.add_argument(
        "--max-real",
        type=int,
        default=DEFAULT_MAX_REAL_FRAMES,
        help=f"at most this many real frames (default {DEFAULT_MAX_REAL_FRAMES})",
    )


def run(args: argparse.Namespace) -> int:
    from steelcore.settings import get_settings
    from training.model_bundle import load_bundle

    if args.synthetic < 0 or args.max_real < 0:
        print("steel quantize: --synthetic and --max-real must not be negative", file=sys.stderr)
        return exit_codes.BAD_INPUT
    try:
        import nncf  # noqa: F401  (checked first: an install without the models extra lacks it)
    except ImportError:
        print("steel quantize: needs nncf (pip install -e '.[models]')", file=sys.stderr)
        return exit_codes.FAILURE
    try:
        bundle = load_bundle(args.model or get_settings().model_name)
        networks = tuple(n.strip() for n in args.networks.split(",") if n.strip())
        record = quantize_bundle(bundle, args.calibration, args.synthetic, args.max_real, networks)
    except (FileNotFoundError, ValueError) as exc:
        print(f"steel quantize: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    calibration = record["calibration"]
    print(
        f"wrote int8 {', '.join(record['networks'])} of {bundle.name} to {Path(bundle.path) / INT8_DIR} "
        f"(calibrated on {calibration['real_frames']} real + {calibration['synthetic_frames']} synthetic "
        f"frames, {calibration['skipped']} skipped)"
    )
    print(
        "measure before serving: steel eval --runtime openvino --precision int8 ...; "
        "steel export --format openvino --repo ... then serves it"
    )
    return exit_codes.OK
