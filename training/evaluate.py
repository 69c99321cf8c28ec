"""`steel eval`: score a model bundle on a labelled dataset, raw and post-processed, to JSON + PNG.

"raw" is the segmenter's output thresholded at 0.5 with no gate, no minimum area and overlaps left
as they are; "postprocessed" is what the product serves (the bundle's postprocess.json applied by
steelcore.postprocess). Image-level ROC AUC scores the classifier's probabilities, or the
segmenter's largest pixel probability when the bundle has no classifier (``auc_score`` says which).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steelcore import exit_codes
from training.cli_options import add_network_run_options
from training.json_files import write_json
from training.openvino_bundle import PRECISIONS

if TYPE_CHECKING:
    from training.datasets import SteelDataset
    from training.model_bundle import ModelBundle

log = logging.getLogger(__name__)

BATCH_SIZE = 8
RAW_THRESHOLD = 0.5
VIEWS = ("raw", "postprocessed")


def check_classes(bundle: ModelBundle, dataset: SteelDataset) -> None:
    """ValueError when the dataset's classes are not the model's (e.g. a Severstal model on NEU-Seg)."""
    if list(dataset.class_ids) != list(bundle.class_ids):
        model_classes = ", ".join(f"{c} {bundle.class_names.get(c, '')}".strip() for c in bundle.class_ids)
        data_classes = ", ".join(f"{c} {dataset.class_names.get(c, '')}".strip() for c in dataset.class_ids)
        raise ValueError(
            f"model {bundle.name} predicts classes [{model_classes}] but dataset {dataset.root} "
            f"has classes [{data_classes}]"
        )


def evaluate_bundle(
    model: str | Path,
    data: str | Path | list[str],
    split: str = "val",
    json_out: str | Path | None = None,
    plot: str | Path | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    device: str = "cpu",
    robustness: bool = False,
    runtime: str = "torch",
    precision: str = "auto",
) -> dict[str, Any]:
    """Evaluate bundle model (name or path) on data's split; write JSON / PNG if paths are given.

    robustness: also score the frames 20 gray levels brighter, 20 darker and re-encoded at JPEG
    quality 70 (training.robustness), reported as the loss in post-processed mean Dice.
    runtime: "torch" (eager) or "openvino" (the CPU runtime Triton serves, at ``precision``).
    """
    from training.mixed_data import open_mixed
    from training.model_bundle import load_bundle

    bundle = load_bundle(model, device=device)
    if runtime != "torch":
        from training.openvino_bundle import attach_runtime

        attach_runtime(bundle, runtime, precision=precision)
    dataset = open_mixed(data if isinstance(data, list) else [str(data)], split=split)
    if len(dataset) == 0:
        hint = " (try --split all)" if split != "all" else ""
        raise ValueError(f"the {split} split of {data} holds no images{hint}")
    check_classes(bundle, dataset)

    started = time.perf_counter()
    results = score_dataset(bundle, dataset, batch_size, progress, f"eval {bundle.name}")
    seconds = time.perf_counter() - started
    report: dict[str, Any] = {
        "model": {
            "name": bundle.name,
            "path": str(Path(bundle.path).resolve()),
            "class_ids": list(bundle.class_ids),
            "class_names": {str(c): bundle.class_names[c] for c in bundle.class_ids},
            "classifier": bundle.classifier is not None,
            "runtime": runtime,
            "precision": getattr(bundle.runtime, "precision", "f32"),
        },
        "data": {
            "path": ", ".join(str(Path(r).resolve()) for r in dataset.roots),
            "layout": dataset.layout,
            "split": split,
        },
        "images": len(dataset),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "frames_per_s": round(len(dataset) / seconds, 3) if seconds > 0 else None,
        "raw_pixel_threshold": RAW_THRESHOLD,
        "postprocess": bundle.postprocess.to_json(),
        "auc_score": "classifier probability" if bundle.classifier is not None else "max pixel probability",
        "summary": {
            "mean_dice_raw": results["raw"]["mean_dice"],
            "mean_dice": results["postprocessed"]["mean_dice"],
            "miou_raw": results["raw"]["pixel"]["miou_with_background"],
            "miou": results["postprocessed"]["pixel"]["miou_with_background"],
        },
        **results,
    }
    if robustness:
        from training.robustness import PERTURBATIONS, PerturbedDataset, robustness_summary

        perturbed = {
            name: score_dataset(bundle, PerturbedDataset(dataset, fn), batch_size, progress, name)[
                "postprocessed"
            ]["mean_dice"]
            for name, fn in PERTURBATIONS.items()
        }
        report["robustness"] = robustness_summary(results["postprocessed"]["mean_dice"], perturbed)
    print(format_report(report))
    if json_out is not None:
        write_json(Path(json_out), report)
        log.info("metrics written to %s", json_out)
    if plot is not None:
        from training.eval_plots import plot_report

        plot_report(report, Path(plot))
        log.info("plot written to %s", plot)
    return report


def score_dataset(
    bundle: ModelBundle, dataset: SteelDataset, batch_size: int, progress: bool, desc: str
) -> dict[str, Any]:
    """Raw and post-processed metrics of the bundle on every frame of dataset."""
    from tqdm import tqdm

    from steelcore.postprocess import apply_postprocess
    from training.inference import batches_by_shape, predict_probs
    from training.metrics import SegmentationAccumulator

    accumulators = {view: SegmentationAccumulator(class_ids=list(bundle.class_ids)) for view in VIEWS}
    samples = ((masks, image) for image, masks, _ in (dataset[i] for i in range(len(dataset))))
    with tqdm(total=len(dataset), desc=desc, unit="frame", disable=not progress) as bar:
        for truths, frames in batches_by_shape(samples, batch_size):
            cls, seg = predict_probs(bundle, frames)
            truth = np.stack(truths)
            scores = cls if cls is not None else seg.max(axis=(2, 3))
            accumulators["raw"].update(seg >= RAW_THRESHOLD, truth, scores)
            accumulators["postprocessed"].update(
                apply_postprocess(cls, seg, bundle.postprocess), truth, scores
            )
            bar.update(len(frames))
    return {view: acc.result() for view, acc in accumulators.items()}


def _fmt(value: float | None, width: int = 7) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.4f}"


def format_report(report: dict[str, Any]) -> str:
    """Terminal tables: one block per view, one row per class."""
    names = report["model"]["class_names"]
    head = (
        f"{'class':<16}{'Dice':>7}{'IoU':>7}{'px P':>7}{'px R':>7}{'px F1':>7}"
        f"{'img P':>7}{'img R':>7}{'img F1':>7}{'AUC':>7}{'n img':>7}"
    )
    data = report["data"]
    lines = [
        f"{report['model']['name']} on {data['path']} ({data['split']}, {report['images']} images"
        + (f", {report['frames_per_s']} frames/s)" if report.get("frames_per_s") else ")")
    ]
    for view in VIEWS:
        r = report[view]
        title = "raw (pixel threshold 0.5, no gate, no min area)" if view == "raw" else "post-processed"
        lines += ["", title, head]
        for cid in names:
            label = f"{cid} {names[cid]}"[:15]
            cells = [r["dice_per_class"][cid]] + [
                r["pixel"][m][cid] for m in ("iou", "precision", "recall", "f1")
            ]
            cells += [r["image"][m][cid] for m in ("precision", "recall", "f1", "auc")]
            lines.append(
                f"{label:<16}" + "".join(_fmt(v) for v in cells) + f"{r['image']['support'][cid]:>7d}"
            )
        lines.append(
            f"mean Dice over (image, class) {r['mean_dice']:.4f}   "
            f"mIoU (background + classes) {_fmt(r['pixel']['miou_with_background'], 0)}   "
            f"mIoU (classes) {_fmt(r['pixel']['miou_classes'], 0)}"
        )
        if "empty_baseline_dice" in r:
            fmr, recall = r["false_mask_rate"], r["frame"]["recall"]
            lines.append(
                f"all-empty answer {r['empty_baseline_dice']:.4f}   false masks on defect-free pairs "
                + ("n/a" if fmr is None else f"{fmr:.1%}")
                + "   defective-frame recall "
                + ("n/a" if recall is None else f"{recall:.3f}")
            )
    robustness = report.get("robustness")
    if robustness:
        lines += ["", f"robustness (post-processed, base mean Dice {robustness['base_mean_dice']:.4f})"]
        for name, row in robustness["perturbations"].items():
            verdict = "ok" if row["within_target"] else f"LOSES MORE THAN {robustness['max_loss_target']}"
            lines.append(f"  {name:<14} mean Dice {row['mean_dice']:.4f} ({row['delta']:+.4f}) {verdict}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="bundle name (under the models dir) or path")
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset folder (Kaggle layout or NEU pairs)"
    )
    parser.add_argument("--split", choices=("val", "all", "train"), default="val")
    parser.add_argument("--json", type=Path, required=True, help="where to write the metrics JSON")
    parser.add_argument("--plot", type=Path, help="PNG of per-class results")
    add_network_run_options(parser, BATCH_SIZE)
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="also score the frames 20 gray levels brighter, 20 darker and re-encoded at JPEG quality 70",
    )
    parser.add_argument(
        "--runtime",
        choices=("torch", "openvino"),
        default="torch",
        help="torch: eager networks (default); openvino: the CPU runtime the Triton repository serves",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="openvino precision (auto: bf16 where the CPU has it natively, else f32; "
        "int8: the networks `steel quantize` wrote into the bundle)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        evaluate_bundle(
            args.model,
            args.data,
            args.split,
            args.json,
            args.plot,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device=args.device,
            robustness=args.robustness,
            runtime=args.runtime,
            precision=args.precision,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"steel eval: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    return exit_codes.OK
