"""What every benchmark shares: timing, machine facts, the JSON file, the table and the plot.

Each benchmark times its candidates side by side in one run with
``time_callable``, then hands its rows to ``print_table`` and its results to
``write_results`` so that every result file has the same envelope::

    {"benchmark": NAME, "machine": {...}, "config": {...}, "results": [...]}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path("bench-results")  # relative to the working directory, ignored by git


@dataclass(frozen=True)
class Timing:
    """Per-call wall time of one candidate, in microseconds."""

    repeats: int
    number: int
    median_us: float
    p50_us: float
    p95_us: float
    min_us: float
    mean_us: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def per_item(self, items: int) -> Timing:
        """This timing divided over ``items`` (a call that processed a batch of items)."""
        if items < 1:
            raise ValueError(f"items must be positive, got {items}")
        return replace(
            self,
            median_us=self.median_us / items,
            p50_us=self.p50_us / items,
            p95_us=self.p95_us / items,
            min_us=self.min_us / items,
            mean_us=self.mean_us / items,
        )


def _percentile(sorted_samples: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks, as numpy's default.
    return float(np.percentile(np.asarray(sorted_samples), q))


def time_callable(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 20, number: int = 1) -> Timing:
    """Time ``fn`` with ``warmup`` untimed calls, then ``repeats`` samples of ``number`` calls each."""
    if repeats < 1 or number < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, number >= 1, warmup >= 0; got {repeats}, {number}, {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter_ns() - start) / number / 1_000)
    samples.sort()
    median = statistics.median(samples)
    return Timing(
        repeats=repeats,
        number=number,
        median_us=median,
        p50_us=median,
        p95_us=_percentile(samples, 95),
        min_us=samples[0],
        mean_us=statistics.fmean(samples),
    )


def ratio(baseline: float, ours: float) -> float:
    """How many times faster ours is than the baseline (> 1 means faster)."""
    return baseline / ours if ours > 0 else float("inf")


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare two result files."""
    info: dict[str, Any] = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
    }
    # Report library threads only for libraries the benchmark actually loaded,
    # so that measuring never imports torch into a numpy-only run.
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        info["opencv"] = cv2.__version__
        info["opencv_threads"] = cv2.getNumThreads()
    return info


def add_common_arguments(parser: argparse.ArgumentParser, *, repeats: int = 20, warmup: int = 3) -> None:
    """The options every benchmark takes."""
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"timed samples per case (default {repeats})"
    )
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls first (default {warmup})")
    add_output_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser, name: str = "<benchmark>") -> None:
    """--json (where results_path writes when it is not given) and --no-plot."""
    parser.add_argument(
        "--json", type=Path, default=None, help=f"results file (default bench-results/{name}.json)"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG chart next to the JSON")


def results_path(name: str, override: Path | None = None) -> Path:
    return override if override is not None else RESULTS_DIR / f"{name}.json"


def write_results(
    name: str, results: Sequence[Mapping[str, Any]], config: Mapping[str, Any], path: Path | None = None
) -> Path:
    """Write the result envelope atomically and return its path."""
    target = results_path(name, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine_info(), "config": dict(config), "results": list(results)}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned; text left, numbers right."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows)
        if rows
        else False
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> None:
    if title:
        print(title)
    print(format_table(headers, rows))


def save_bar_chart(
    path: Path,
    title: str,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    log_scale: bool = False,
) -> Path:
    """Grouped bars, one group per category and one bar per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(categories) + 2), 4.0))
    width = 0.8 / max(1, len(series))
    positions = np.arange(len(categories))
    for index, (label, values) in enumerate(series.items()):
        ax.bar(positions + (index - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(positions, list(categories), rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_scale:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
