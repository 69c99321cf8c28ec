"""PNG of an evaluation report: per-class bars, raw beside post-processed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANELS = (
    ("Dice per class", lambda r: r["dice_per_class"]),
    ("pixel IoU", lambda r: r["pixel"]["iou"]),
    ("pixel F1", lambda r: r["pixel"]["f1"]),
    ("image-level F1", lambda r: r["image"]["f1"]),
    ("image-level ROC AUC", lambda r: r["image"]["auc"]),
)
COLOURS = {"raw": "#9e9e9e", "postprocessed": "#1f77b4"}


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Write a row of bar charts (one per metric, grouped by class) to path and return it."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    names = report["model"]["class_names"]
    ids = list(names)
    x = np.arange(len(ids))
    fig = Figure(figsize=(4 * len(PANELS), 3.6))
    axes = fig.subplots(1, len(PANELS), sharey=True)
    for ax, (title, pick) in zip(axes, PANELS, strict=True):
        # AUC scores the same probabilities in both views: one bar.
        views = ((0.0, "raw"),) if "AUC" in title else ((-0.2, "raw"), (0.2, "postprocessed"))
        for offset, view in views:
            values = pick(report[view])
            # An undefined metric (no positives) is drawn as an empty slot, not as zero.
            heights = [np.nan if values[c] is None else values[c] for c in ids]
            label = report["auc_score"] if len(views) == 1 else view
            ax.bar(x + offset, heights, width=0.4, color=COLOURS[view], label=label)
        ax.set_title(title)
        ax.set_xticks(x, [f"{c}\n{names[c]}" for c in ids])
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower left")
    axes[-1].legend(loc="lower left")
    summary = report["summary"]
    miou = summary["miou"]
    fig.suptitle(
        f"{report['model']['name']} on {Path(report['data']['path']).name} ({report['data']['split']}, "
        f"{report['images']} images): mean Dice {summary['mean_dice_raw']:.4f} raw -> "
        f"{summary['mean_dice']:.4f}" + ("" if miou is None else f", mIoU {miou:.4f}")
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
