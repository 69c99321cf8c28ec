"""The reference of `steel bench pipeline`: the Triton ensemble alone, on the same server and frames."""

from __future__ import annotations

import argparse
from typing import Any


def ensemble_alone(settings: Any, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """``steel bench triton``'s closed loop on the stack's Triton: worker-sized batches from W callers
    and from 2W (a worker inferring ahead has two requests in flight); the faster is the reference."""
    from benchmarks.closed_loop import batches_of, closed_loop, synthetic_frames
    from steelcore.service_urls import triton_url
    from steelcore.triton.ensemble_client import TritonEnsembleClient

    frames, _clean = synthetic_frames(0, 16)
    batches = batches_of(frames, args.batch_size, args.frames)
    by_concurrency: dict[int, dict[str, Any]] = {}
    for concurrency in (workers, 2 * workers):
        with TritonEnsembleClient(
            triton_url(settings),
            settings.triton_protocol,
            settings.triton_model,
            timeout_s=300,
            max_in_flight=concurrency,
        ) as client:
            client.infer(batches[0])  # warm-up
            measured = by_concurrency[concurrency] = closed_loop(client.infer, batches, concurrency)
        print(
            f"  ensemble alone: {measured['frames_per_s']:.2f} frames/s "
            f"(batch {args.batch_size} x{concurrency})"
        )
    best = max(by_concurrency, key=lambda c: by_concurrency[c]["frames_per_s"])
    return {
        "ensemble_frames_per_s": by_concurrency[best]["frames_per_s"],
        "ensemble_p50_ms": by_concurrency[best]["p50_ms"],
        "ensemble_p99_ms": by_concurrency[best]["p99_ms"],
        "ensemble_batch": args.batch_size,
        "ensemble_concurrency": best,
        "ensemble_frames_per_s_by_concurrency": {
            str(c): m["frames_per_s"] for c, m in by_concurrency.items()
        },
    }
