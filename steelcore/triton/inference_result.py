"""What the ensemble answers and the tensors it is asked with: triton_models/steel_ensemble's contract."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

INPUT_NAME = "FRAMES"
OUTPUT_NAMES = ("PROBS", "PIXEL_COUNTS", "RLE")
# The version of the model bundle that judged each frame (issue 16): repositories exported before
# model versions lack it, so it is requested only when the model's config declares it.
VERSION_OUTPUT = "MODEL_VERSION"


@dataclass(frozen=True)
class EnsembleResult:
    """The ensemble's answer for a batch of B frames and C classes."""

    probs: np.ndarray  # float32 [B, C]: per-class defect probability
    pixel_counts: np.ndarray  # int64 [B, C]: defect pixels per class after post-processing
    rles: list[list[str]]  # B lists of C Severstal RLE strings ('' = no defect of that class)
    # int [B]: the model version that judged each frame; None from a model without MODEL_VERSION.
    versions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rles)

    @staticmethod
    def concatenate(parts: Sequence[EnsembleResult]) -> EnsembleResult:
        # Parts of one request are judged by versions answered separately: a part without the
        # output makes the whole answer version-less rather than half-labelled.
        versions = [p.versions for p in parts]
        return EnsembleResult(
            probs=np.concatenate([p.probs for p in parts]),
            pixel_counts=np.concatenate([p.pixel_counts for p in parts]),
            rles=[row for p in parts for row in p.rles],
            versions=None if any(v is None for v in versions) else np.concatenate(versions),  # type: ignore[arg-type]
        )


def validate_frames(frames: np.ndarray) -> np.ndarray:
    """``frames`` as a C-contiguous uint8 [B, H, W] array; ValueError naming what is wrong."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 3 or frames.shape[1:] != (FRAME_HEIGHT, FRAME_WIDTH) or frames.shape[0] == 0:
        raise ValueError(
            f"frames must be [B, {FRAME_HEIGHT}, {FRAME_WIDTH}] with B >= 1, got shape {frames.shape}"
        )
    return np.ascontiguousarray(frames)


def gather_parts(parts: list[Future[EnsembleResult]]) -> Future[EnsembleResult]:
    """One future resolving to the concatenation of ``parts``, in order."""
    combined: Future[EnsembleResult] = Future()
    remaining = [len(parts)]
    lock = threading.Lock()

    def part_done(_: Future[EnsembleResult]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        errors = [p.exception() for p in parts if p.exception() is not None]
        if errors:
            combined.set_exception(errors[0])
        else:
            combined.set_result(EnsembleResult.concatenate([p.result() for p in parts]))

    for part in parts:
        part.add_done_callback(part_done)
    return combined
