"""Retrain the production model on the frames operators reviewed, and register the result as a
candidate for a shadow run.

    steel retrain --from-db --data ../shared/data/severstal_real:4 --out models/retrained-1
    steel retrain --feedback data/reviewed --data ../shared/data/severstal_real:4 --out models/r1

The reviewed frames come from Postgres (``--from-db``: confirmed defects are labels, defects
operators marked false become background, so confirmed false alarms are negative examples) or from
the dashboard's export (the same Kaggle layout). A share of them (``--holdout``, chosen by a hash of
the frame id, so the same frames stay out on every run) is held back: the candidate never trains
or tunes on them. Training starts from the production bundle's weights on the rest, oversampled
by ``--feedback-factor``, mixed with the base data (``--data``, as for `steel train`), and tunes
post-processing on the validation split as `steel train all` does. Then production and candidate
are scored side by side on the held-back frames and on each ``--eval`` set; the comparison goes
into the candidate's retrain.json and the bundle is marked a candidate (lifecycle.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steelcore import exit_codes
from steelcore.kaggle_csv import find_image_dir, read_labels, write_submission

log = logging.getLogger("steel.retrain")

LIFECYCLE_FILE = "lifecycle.json"
REPORT_FILE = "retrain.json"
DEFAULT_HOLDOUT = 0.2
DEFAULT_FEEDBACK_FACTOR = 4.0
DEFAULT_EPOCHS = 3


def held_out(image_id: str, share: float) -> bool:
    """Whether a reviewed frame is held back for evaluation: a hash of its id, not its order, so
    frames reviewed later never move an earlier frame between the two parts."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def split_feedback(source: Path, out: Path, share: float) -> dict[str, int]:
    """Copy the reviewed dataset at ``source`` into ``out/train`` and ``out/holdout`` (Kaggle
    layout each). ValueError when there are too few frames for both parts."""
    image_dir = find_image_dir(source)
    csv_path = source / "train.csv"
    if image_dir is None or not csv_path.is_file():
        raise ValueError(f"{source} is not a reviewed-frames dataset (train_images/ + train.csv)")
    labels = read_labels(csv_path)
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    parts: dict[str, list[Path]] = {"train": [], "holdout": []}
    for path in images:
        parts["holdout" if held_out(path.name, share) else "train"].append(path)
    if len(images) >= 2 and not parts["holdout"]:  # a tiny set: still hold one frame back
        parts["holdout"].append(parts["train"].pop())
    if not parts["train"] or not parts["holdout"]:
        raise ValueError(
            f"{source} holds {len(images)} reviewed frames: need at least 2 (one to train on, one to test)"
        )
    for name, paths in parts.items():
        target = out / name / "train_images"
        target.mkdir(parents=True, exist_ok=True)
        rows = []
        for path in paths:
            _link_or_copy(path, target / path.name)
            for class_id, encoded in enumerate(labels.get(path.name, []), start=1):
                if encoded:
                    rows.append((path.name, class_id, encoded))
        write_submission(out / name / "train.csv", rows)
    return {name: len(paths) for name, paths in parts.items()}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_from_db(out: Path) -> Path:
    """The reviewed frames of the defect database (STEEL_POSTGRES_URL), as the dashboard exports them."""
    from steelcore.postgres.engine import create_db_engine
    from steelcore.retraining_export import export_retraining_dataset
    from steelcore.service_urls import postgres_url
    from steelcore.settings import get_settings

    engine = create_db_engine(postgres_url(get_settings()))
    try:
        summary = export_retraining_dataset(engine, out)
    finally:
        engine.dispose()
    log.info(
        "exported %s reviewed frames (%s false-alarm negatives; %s skipped unreviewed, %s without image)",
        summary.images, summary.negatives, summary.skipped_unreviewed, summary.skipped_no_image,
    )  # fmt: skip
    return out


def _train_args(
    args: argparse.Namespace, feedback_train: Path, out: Path, production: Path
) -> argparse.Namespace:
    from training import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    argv = ["all", "--data", f"{feedback_train}:{args.feedback_factor}"]
    for spec in args.data or []:
        argv += ["--data", spec]
    argv += ["--init", str(production), "--out", str(out), "--name", args.name or out.name]
    argv += ["--epochs", str(args.epochs), "--seed", str(args.seed), "--balanced"]
    argv += ["--description", f"{production.name} retrained on operator verdicts"]
    if args.crop:
        argv += ["--crop", args.crop]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.no_progress:
        argv.append("--no-progress")
    return parser.parse_args(argv)


def compare(production: Path, candidate: Path, sets: dict[str, Path], progress: bool) -> dict[str, Any]:
    """Post-processed mean Dice and false-mask rate of both bundles on each named set (all frames)."""
    from training.evaluate import evaluate_bundle

    rows: dict[str, Any] = {}
    for name, data in sets.items():
        scores = {}
        for role, bundle in (("production", production), ("candidate", candidate)):
            metrics = evaluate_bundle(bundle, str(data), "all", progress=progress)["postprocessed"]
            scores[role] = {
                "mean_dice": metrics["mean_dice"],
                "false_mask_rate": metrics["false_mask_rate"],
                "images": metrics["images"],
            }
        scores["dice_change"] = scores["candidate"]["mean_dice"] - scores["production"]["mean_dice"]
        rows[name] = scores
    return rows


def retrain(args: argparse.Namespace) -> dict[str, Any]:
    from training.model_bundle import resolve_bundle_path

    production = resolve_bundle_path(args.model)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new --out")
    with tempfile.TemporaryDirectory(prefix="steel-retrain-") as tmp:
        work = Path(tmp)
        source = args.feedback if args.feedback else export_from_db(work / "reviewed")
        counts = split_feedback(Path(source), work / "split", args.holdout)
        log.info("reviewed frames: %s to train on, %s held back", counts["train"], counts["holdout"])
        from training.train import train_all

        try:
            train_all(_train_args(args, work / "split" / "train", out, production))
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # no half-written candidate is left behind
            raise
        sets = {"reviewed_holdout": work / "split" / "holdout"}
        sets |= {Path(p).name: Path(p) for p in args.eval or []}
        comparison = compare(production, out, sets, progress=not args.no_progress)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "production": production.name,
        "candidate": out.name,
        "reviewed_frames": counts,
        "holdout_share": args.holdout,
        "feedback_factor": args.feedback_factor,
        "base_data": list(args.data or []),
        "epochs": args.epochs,
        "comparison": comparison,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    lifecycle = {"status": "candidate", "parent": production.name, "created": report["created"]}
    (out / LIFECYCLE_FILE).write_text(json.dumps(lifecycle, indent=2) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--feedback", type=Path, help="reviewed frames exported by the dashboard (Kaggle layout)"
    )
    source.add_argument(
        "--from-db", action="store_true", help="export the reviewed frames from STEEL_POSTGRES_URL"
    )
    parser.add_argument(
        "--model", default="default", help="the production bundle to start from (default: default)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the candidate bundle folder (new)")
    parser.add_argument("--name", help="candidate name (default: the --out folder name)")
    parser.add_argument(
        "--data", action="append", help="base training data DIR[:FACTOR], as for `steel train`; repeat"
    )
    parser.add_argument(
        "--eval", action="append", type=Path, help="also compare on this labelled set; repeat"
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        help="share of reviewed frames held back (default 0.2)",
    )
    parser.add_argument(
        "--feedback-factor",
        type=float,
        default=DEFAULT_FEEDBACK_FACTOR,
        help=f"draws of each reviewed frame per epoch (default {DEFAULT_FEEDBACK_FACTOR:g})",
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", help="segmenter training crop HxW or 'full' (default: as `steel train`)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--no-progress", action="store_true")


def _print_report(report: dict[str, Any]) -> None:
    print(f"candidate {report['candidate']} (from {report['production']}): {report['reviewed_frames']}")
    print(f"{'set':<24} {'production':>10} {'candidate':>10} {'change':>8}")
    for name, row in report["comparison"].items():
        prod, cand = row["production"]["mean_dice"], row["candidate"]["mean_dice"]
        print(f"{name:<24} {prod:>10.4f} {cand:>10.4f} {row['dice_change']:>+8.4f}")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.holdout < 1 or args.epochs < 1 or not 0 < args.feedback_factor < math.inf:
        print(
            "steel retrain: need 0 < --holdout < 1, --epochs >= 1 and --feedback-factor > 0", file=sys.stderr
        )
        return exit_codes.USAGE
    from sqlalchemy.exc import OperationalError

    from steelcore.service_urls import ServiceUnavailableError

    try:
        report = retrain(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"steel retrain: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except (OperationalError, ServiceUnavailableError) as exc:
        print(f"steel retrain: the defect database is unavailable: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    _print_report(report)
    return exit_codes.OK
