"""The tables and charts of `steel bench pipeline`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import report

STAGES = ("decode", "infer", "store", "alarm", "commit")


def print_results(results: Sequence[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        rows.append(
            [
                case_label(r),
                r["backlog_frames_per_s"],
                r["ensemble_frames_per_s"],
                r["pipeline_vs_ensemble"],
                r["steady_offered_frames_per_s"],
                r["steady_achieved_frames_per_s"],
                latency_pair(r["camera_to_stored_ms"]),
                latency_pair(r["camera_to_alarm_ms"]),
            ]
        )
    report.print_table(
        ["case", "pipeline f/s", "ensemble f/s", "ratio", "steady offered", "steady achieved",
         "camera->stored p50/p99 ms", "camera->alarm p50/p99 ms"],
        rows,
        title="pipeline (backlog) vs Triton ensemble alone, same server, same run",
    )  # fmt: skip
    report.print_table(
        ["case", *STAGES],
        [[case_label(r), *(r["stage_ms_per_frame"].get(s, float("nan")) for s in STAGES)] for r in results],
        title="worker stage time, ms per frame (from the workers' metrics)",
    )


def case_label(r: Mapping[str, Any]) -> str:
    """'1 worker(s)', with ', one batch at a time' for a case run with --no-infer-ahead."""
    return f"{r['workers']} worker(s)" + ("" if r.get("infer_ahead", True) else ", one batch at a time")


def latency_pair(d: Mapping[str, Any]) -> str:
    return f"{d['p50']:.0f} / {d['p99']:.0f}" if d.get("count") else "-"


def plot_results(results: Sequence[dict[str, Any]], path: Path) -> None:
    labels = [case_label(r) for r in results]
    report.save_bar_chart(
        path.with_suffix(".png"),
        "Pipeline vs Triton ensemble alone",
        labels,
        {
            "pipeline (backlog)": [r["backlog_frames_per_s"] for r in results],
            "ensemble alone": [r["ensemble_frames_per_s"] for r in results],
        },
        "frames/s",
    )
    report.save_bar_chart(
        path.with_name(path.stem + "_stages.png"),
        "Worker stage time per frame",
        list(STAGES),
        {
            label: [r["stage_ms_per_frame"].get(s, 0.0) for s in STAGES]
            for label, r in zip(labels, results, strict=True)
        },
        "ms per frame",
    )
