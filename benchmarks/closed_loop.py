"""Closed-loop load for the serving benches: callers sending batches back to back, and their frames."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def closed_loop(
    call: Callable[[np.ndarray], object], batches: Sequence[np.ndarray], concurrency: int
) -> dict[str, Any]:
    """Send ``batches`` with ``concurrency`` callers back to back; frames/s and latency percentiles."""
    latencies: list[float] = []
    lock = threading.Lock()
    cursor = iter(range(len(batches)))
    errors: list[Exception] = []

    def caller() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None or errors:
                return
            start = time.perf_counter()
            try:
                call(batches[index])
            except Exception as exc:  # reported after the threads have stopped
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    frames = sum(len(b) for b in batches)
    ms = np.asarray(latencies) * 1000
    return {
        "frames": frames,
        "requests": len(batches),
        "wall_s": wall,
        "frames_per_s": frames / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def batches_of(frames: np.ndarray, batch: int, total_frames: int) -> list[np.ndarray]:
    """``ceil(total_frames / batch)`` batches cycling through ``frames``."""
    count = max(1, math.ceil(total_frames / batch))
    return [np.take(frames, range(i * batch, (i + 1) * batch), axis=0, mode="wrap") for i in range(count)]


def real_frames(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(every frame, the defect-free frames) of a Kaggle-layout folder of 1600x256 frames."""
    from training.datasets import open_dataset

    dataset = open_dataset(folder, "all")
    clean = ~dataset.class_presence().any(axis=1)
    frames = np.stack([dataset.read_image(i) for i in dataset.image_ids])
    if not clean.any():
        raise ValueError(f"{folder} holds no defect-free frame to show the cascade skipping work")
    return frames, frames[clean]


def synthetic_frames(seed: int, count: int) -> tuple[np.ndarray, int]:
    """``count`` frames of the synthetic camera (Severstal class mix) and how many are clean."""
    from producers.synthetic_camera import SyntheticCamera

    camera = SyntheticCamera(seed=seed)
    shots = [camera.frame(i) for i in range(count)]
    return np.stack([s.image for s in shots]), sum(1 for s in shots if not s.classes)
