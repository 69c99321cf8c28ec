"""The timed cases of `steel bench model`, run in interleaved rounds.

All cases are timed round by round (case A, B, C, then again), so that load from other processes on
a shared machine falls on every case alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Product target batch on the 2-core CPU box (see model_bench.TARGET_MS_PER_FRAME).
TARGET_BATCH = 8
BATCH_SIZES = (1, TARGET_BATCH)


@dataclass
class Case:
    """One timed callable and the samples (ms per frame) it collected."""

    name: str
    batch: int
    fn: Callable[[], object]
    samples_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)


def time_rounds(cases: list[Case], warmup: int, repeats: int) -> None:
    import torch
    from tqdm import tqdm

    with torch.inference_mode():
        for case in cases:
            for _ in range(warmup):
                case.fn()
        for _ in tqdm(range(repeats), desc="rounds", unit="round"):
            for case in cases:
                start = time.perf_counter()
                case.fn()
                case.samples_ms.append((time.perf_counter() - start) * 1000 / case.batch)
