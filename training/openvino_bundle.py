"""A model bundle's networks on the CPU runtime (OpenVINO), for `steel eval`, `steel predict` and benches.

``openvino_pair(bundle)`` exports the bundle's classifier and segmenter to ONNX the way the Triton
repository does (``training.triton_export.export_onnx_network``: uint8 frames in, probabilities out,
the segmenter's as uint8 codes) and compiles them with ``steelcore.cpu_runtime.OpenVINONetwork``.
``attach_runtime`` hangs the pair on the bundle, and ``training.inference.predict_probs`` then runs
it instead of eager torch, so every consumer of ``predict_probs`` (evaluation, prediction) can be
checked on the runtime that serves.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from steelcore.cpu_runtime import PRECISIONS as CPU_PRECISIONS
from steelcore.postprocess import probabilities

if TYPE_CHECKING:
    from steelcore.cpu_runtime import OpenVINONetwork
    from training.model_bundle import ModelBundle

log = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("torch", "openvino")
INT8 = "int8"
# OpenVINO's precisions (steelcore.cpu_runtime) and the bundle's int8 networks (training.quantize).
PRECISIONS: tuple[str, ...] = (*CPU_PRECISIONS, INT8)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class OpenVINOPair:
    """The bundle's networks compiled by OpenVINO; called like ``predict_probs`` minus the bundle."""

    classifier: OpenVINONetwork | None
    segmenter: OpenVINONetwork

    @property
    def precision(self) -> str:
        return self.segmenter.precision

    def served(self, frames: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(classifier probabilities, segmenter uint8 codes) as Triton's networks answer them."""
        seg = self.segmenter(frames)
        cls = self.classifier(frames) if self.classifier is not None else None
        return cls, seg

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """As ``predict_probs`` answers: float32 probabilities (the codes / 255)."""
        cls, seg = self.served(frames)
        return cls, probabilities(seg)


def export_onnx_networks(bundle: ModelBundle, out_dir: Path) -> dict[str, Path]:
    """classifier.onnx (if any) and segmenter.onnx of the bundle in ``out_dir``, as Triton serves them."""
    from training.triton_export import export_onnx_network

    paths = {}
    for task, network in (("classifier", bundle.classifier), ("segmenter", bundle.segmenter)):
        if network is not None:
            path = out_dir / f"{task}.onnx"
            export_onnx_network(copy.deepcopy(network).cpu(), path, "FRAMES", "PROBS")
            paths[task] = path
    return paths


def openvino_pair(
    bundle: ModelBundle, threads: int | None = None, precision: str = "auto", unquantized: str = "auto"
) -> OpenVINOPair:
    """The bundle's networks compiled at ``precision``: one of ``PRECISIONS``; "int8" runs the
    networks ``steel quantize`` wrote into the bundle, and the others (and what is not quantised
    inside them) at ``unquantized``: "auto", as Triton's CPU repository serves them."""
    from steelcore.cpu_runtime import OpenVINONetwork

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    threads = threads or default_threads()
    int8: dict[str, Path] = {}
    if precision == INT8:
        from training.quantize import load_int8_files

        int8 = load_int8_files(bundle.path)
        precision = unquantized
    with tempfile.TemporaryDirectory(prefix="steel-openvino-") as work:
        paths = export_onnx_networks(bundle, Path(work))
        # Compiled networks keep their weights in memory: the files may go.
        networks = {
            task: OpenVINONetwork(int8.get(task, path), threads, precision) for task, path in paths.items()
        }
    return OpenVINOPair(networks.get("classifier"), networks["segmenter"])


def serving_precision(bundle: ModelBundle) -> str:
    """The precision Triton's CPU repository serves ``bundle`` at when exported by default
    (``training.triton_export.write_repository``): "int8" where the bundle has int8 networks made
    from its current weights, else "auto"."""
    from training.quantize import StaleQuantization, load_int8_files

    try:
        load_int8_files(bundle.path)
    except FileNotFoundError:
        return "auto"
    except StaleQuantization as exc:
        log.warning("serving full precision: %s", exc)
        return "auto"
    return INT8


def attach_runtime(
    bundle: ModelBundle, runtime: str, threads: int | None = None, precision: str = "auto"
) -> ModelBundle:
    """``bundle`` with ``runtime`` ("torch": eager, as loaded; "openvino") used by predict_probs."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    bundle.runtime = None if runtime == "torch" else openvino_pair(bundle, threads, precision)
    return bundle
