"""The timed cases of `steel bench model`, run in interleaved rounds.

All cases are timed round by round (case A, B, C, then again), so that load from other processes on
a shared machine falls on every case alike. Each timed call starts after a short pause (SETTLE_S):
the runtimes keep their worker threads spinning for a while after a call (torch's OpenMP for
milliseconds, OpenVINO's pool briefly), and a case timed right after another runtime's shared the
two cores with those threads. Measured: OpenVINO's int8 segmenter took 14.5 ms right after eager
torch and 9.2-10.7 ms 10-300 ms later; torch 37 ms right after OpenVINO, 33 ms alone. A runtime
serves alone in its process, so each case is timed as it would run there.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Product target batch on the 2-core CPU box (see model_bench.TARGET_MS_PER_FRAME).
TARGET_BATCH = 8
BATCH_SIZES = (1, TARGET_BATCH)
# Pause before each timed call: longer than the spinning measured above (gone after 10 ms).
SETTLE_S = 0.02


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


def time_rounds(cases: list[Case], warmup: int, repeats: int, settle_s: float = SETTLE_S) -> None:
    import torch
    from tqdm import tqdm

    with torch.inference_mode():
        for case in cases:
            for _ in range(warmup):
                case.fn()
        for _ in tqdm(range(repeats), desc="rounds", unit="round"):
            for case in cases:
                time.sleep(settle_s)
                start = time.perf_counter()
                case.fn()
                case.samples_ms.append((time.perf_counter() - start) * 1000 / case.batch)
