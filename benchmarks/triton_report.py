"""The table and chart of `steel bench triton`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import report


def _note(row: dict[str, Any]) -> str:
    parts = []
    if "segmented_share" in row:
        parts.append(f"segmented {row['segmented_share']:.0%}")
    if "identical_rle_share" in row:
        parts.append(f"RLE identical {row['identical_rle_share']:.0%}")
    return ", ".join(parts)


def print_results(results: list[dict[str, Any]]) -> None:
    headers = [
        "comparison", "candidate", "batch", "conc", "frames/s", "p50 ms", "p99 ms", "ratio",
        "seg queue ms", "seg compute ms", "note",
    ]  # fmt: skip
    rows = []
    for r in results:
        segmenter = r.get("triton_split", {}).get("segmenter", {})
        rows.append(
            [
                r["comparison"],
                r["candidate"],
                r["batch"],
                r["concurrency"],
                r["frames_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r.get("ratio_vs_in_process", r.get("gain_vs_ensemble", "")),
                segmenter.get("queue_ms_per_request", ""),
                segmenter.get("compute_ms_per_request", ""),
                _note(r),
            ]
        )
    report.print_table(
        headers, rows, title="Triton ensemble / cascade vs in-process torch (ratio: Triton / baseline)"
    )
    split_rows = [
        [
            f"{r['candidate']} b{r['batch']} x{r['concurrency']}",
            model,
            s["requests"],
            s["mean_batch"],
            s["queue_ms_per_request"],
            s["compute_ms_per_request"],
        ]
        for r in results
        for model, s in r.get("triton_split", {}).items()
    ]
    if split_rows:
        report.print_table(
            ["case", "model", "requests", "mean batch", "queue ms/req", "compute ms/req"],
            split_rows,
            title="\nQueue vs compute per model (Triton metrics; an ensemble's compute is its pipeline)",
        )


def plot_results(results: list[dict[str, Any]], path: Path) -> None:
    cases = [r for r in results if r["comparison"] == "ensemble_vs_in_process"]
    categories = sorted({f"batch {r['batch']}" for r in cases})
    series: dict[str, list[float]] = {}
    for r in cases:
        label = "in-process" if r["candidate"] == "in-process" else f"triton x{r['concurrency']}"
        series.setdefault(label, [0.0] * len(categories))[categories.index(f"batch {r['batch']}")] = r[
            "frames_per_s"
        ]
    report.save_bar_chart(path, "Ensemble vs in-process torch", categories, series, "frames/s")
