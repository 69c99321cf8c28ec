"""PNG of a training run's curves: losses on the left, the validation score on the right."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Validation scores worth plotting, in the order they are looked for.
_SCORES = (
    ("val_mean_dice", "val mean Dice @0.5"),
    ("val_mean_auc", "val mean AUC"),
    ("val_mean_f1", "val mean F1"),
)


def plot_curves(metrics: dict[str, Any], path: str | Path) -> Path:
    """Draw metrics["epochs"] (rows as written to metrics.json) to a PNG at path; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = metrics.get("epochs", [])
    if not rows:
        raise ValueError("no epochs to plot")
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    if all(r.get("val_loss") is not None for r in rows):
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{metrics.get('task', '')} loss")
    ax_loss.legend()
    for key, label in _SCORES:
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax_score.plot(epochs, [float("nan") if v is None else v for v in values], "o-", label=label)
    best = metrics.get("best_epoch")
    if best:
        ax_score.axvline(best, color="grey", linestyle="--", label=f"best epoch {best}")
    ax_score.set(xlabel="epoch", title="validation")
    if ax_score.lines:
        ax_score.legend()
    for ax in (ax_loss, ax_score):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
