"""`steel train all --cv DIR --folds K`: cross-validated training of a shippable bundle.

See training.cross_validation for the procedure. The bundle folder receives:

    BUNDLE/runs/fold-K/{classifier,segmenter}   the fold runs (resumable with --resume)
    BUNDLE/runs/final/{classifier,segmenter}    the shipped networks, trained on every frame
    BUNDLE/postprocess.json                     tuned on all out-of-fold probabilities
    BUNDLE/metrics.json                         the cross-validated report (nested tuning)
    BUNDLE/metrics.png                          the same as a plot
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training.cross_validation import (
    fold_curves,
    nested_predictions,
    plan_folds,
    score_cache,
    with_variants,
)
from training.robustness import PERTURBATIONS, PerturbedDataset, robustness_summary

log = logging.getLogger(__name__)


def _cv_part(specs: list[Any], cv: str) -> int:
    wanted = Path(cv).resolve()
    for i, spec in enumerate(specs):
        if Path(spec.path).resolve() == wanted:
            return i
    raise ValueError(f"--cv {cv} must be one of the --data folders ({', '.join(str(s) for s in specs)})")


def bundle_of(
    run_dirs: dict[str, Path], class_ids: list[int], class_names: dict[int, str], device: str
) -> Any:
    from training.model_bundle import ModelBundle, PostprocessParams
    from training.tune import build_run_model, load_run

    seg = build_run_model(load_run(run_dirs["segmenter"], "segmenter")).to(device)
    cls = (
        build_run_model(load_run(run_dirs["classifier"], "classifier")).to(device)
        if "classifier" in run_dirs
        else None
    )
    return ModelBundle(
        name="fold",
        path=run_dirs["segmenter"],
        meta={},
        class_ids=class_ids,
        class_names=class_names,
        classifier=cls,
        segmenter=seg,
        postprocess=PostprocessParams.neutral(len(class_ids)),
    )


def _train_pair(
    args: argparse.Namespace, tasks: list[str], out: Path, datasets: tuple[Any, Any]
) -> dict[str, Path]:
    from training.train import config_from_args
    from training.trainer import run_is_complete, train_run

    run_dirs = {}
    for task in tasks:
        cfg = dataclasses.replace(config_from_args(args, task), keep="last")
        run_dirs[task] = out / task
        if args.resume and run_is_complete(run_dirs[task], cfg.epochs):
            log.info("%s is complete; not retraining", run_dirs[task])
            continue
        train_run(cfg, run_dirs[task], resume=args.resume, progress=not args.no_progress, datasets=datasets)
    return run_dirs


def _pseudo_label_spec(args: argparse.Namespace) -> Any:
    """--pseudo-label DIR[:FACTOR] as a DataSpec (None without it); ValueError without --teacher."""
    from training.mixed_data import DataSpec

    given, teacher = getattr(args, "pseudo_label", None), getattr(args, "teacher", None)
    if not given:
        if teacher:
            raise ValueError("--teacher is for --pseudo-label")
        return None
    if not teacher:
        raise ValueError("--pseudo-label needs --teacher (a cross-validated bundle)")
    return DataSpec.parse(given)


def _with_part(train: Any, part: Any, factor: float) -> Any:
    from training.mixed_data import MixedDataset

    return MixedDataset([*train.parts, part], [*train.factors, factor], train.split)


def _ordered(pieces: list[tuple[list[int], Any]], total: int) -> Any:
    """One cache in the cross-validated dataset's frame order from per-fold caches."""
    from training.probability_cache import merge_caches, subset_cache

    merged = merge_caches([cache for _indices, cache in pieces])
    position = [i for indices, _cache in pieces for i in indices]
    if sorted(position) != list(range(total)):
        raise RuntimeError("the folds do not cover every frame exactly once")
    order = np.argsort(position).tolist()
    return subset_cache(merged, order)


def train_all_cv(args: argparse.Namespace) -> Path:
    from training.data_checks import check_dataset
    from training.mixed_data import MixedDataset, open_mixed, parse_specs
    from training.model_bundle import save_bundle
    from training.postprocess_search import GATE_THRESHOLDS, search
    from training.probability_cache import collect_probabilities
    from training.run_config import resolved_specs
    from training.trainer import init_weights

    specs = parse_specs([str(d) for d in args.data])
    cv_index = _cv_part(specs, str(args.cv))
    mixed = open_mixed(specs, "all")
    check_dataset(mixed, progress=not args.no_progress)
    seed = args.seed if args.seed is not None else 0
    on_real = float(getattr(args, "synthetic_on_real", 0.0) or 0.0)
    pasted = float(getattr(args, "real_paste", 0.0) or 0.0)
    plans, assignment = plan_folds(mixed, cv_index, args.folds, seed, on_real, pasted)
    target = mixed.parts[cv_index]
    class_ids, class_names = list(mixed.class_ids), dict(mixed.class_names)
    pseudo = _pseudo_label_spec(args)
    if pseudo is not None:
        from training.pseudo_labels import check_teacher_folds

        check_teacher_folds(Path(args.teacher), target.image_ids, assignment)
        frame_shape = target.read_image(target.image_ids[0]).shape
    tasks = ["segmenter"] if args.no_classifier else ["classifier", "segmenter"]
    bundle_dir = Path(args.out)
    runs = bundle_dir / "runs"
    device = args.device or "cpu"
    progress = not args.no_progress

    pieces: dict[str, list[tuple[list[int], Any]]] = {"base": [], **{name: [] for name in PERTURBATIONS}}
    fold_runs: list[dict[str, Path]] = []
    for plan in plans:
        log.info(
            "fold %d/%d: %d training frames (%d of %s), %d held out",
            plan.fold + 1,
            len(plans),
            len(plan.train),
            len(plan.train.parts[cv_index]),
            target.root,
            len(plan.heldout),
        )
        train = plan.train
        if pseudo is not None:
            from training.pseudo_labels import fold_teacher, label_frames

            teacher = fold_teacher(Path(args.teacher), plan.fold, class_ids, class_names, device)
            labelled = label_frames(teacher, Path(pseudo.path), frame_shape, progress)
            train = _with_part(train, labelled, pseudo.factor)
        run_dirs = _train_pair(args, tasks, runs / f"fold-{plan.fold}", (train, plan.heldout))
        fold_runs.append(run_dirs)
        bundle = bundle_of(run_dirs, class_ids, class_names, device)
        pieces["base"].append(
            (plan.heldout_indices, collect_probabilities(bundle, plan.heldout, progress=progress, factor=1))
        )
        for name, perturb in PERTURBATIONS.items():
            heldout = PerturbedDataset(plan.heldout, perturb)
            cache = collect_probabilities(bundle, heldout, progress=False, factor=1)
            pieces[name].append((plan.heldout_indices, cache))

    caches = {name: _ordered(p, len(target)) for name, p in pieces.items()}
    per_fold_params, per_frame = nested_predictions(caches["base"], assignment, search)
    scores = score_cache(caches["base"], per_frame.__getitem__, class_ids)
    perturbed = {
        name: score_cache(caches[name], per_frame.__getitem__, class_ids)["postprocessed"]["mean_dice"]
        for name in PERTURBATIONS
    }
    final_params, choices = search(caches["base"])
    report = _report(args, target, tasks, class_ids, class_names, scores, perturbed, final_params, assignment)
    report["cross_validation"] |= {
        "postprocess_per_fold": [p.to_json() for p in per_fold_params],
        "curves": {task: fold_curves([r[task] for r in fold_runs]) for task in tasks},
    }
    if getattr(args, "cv_only", False):
        _write_report(bundle_dir, report)
        _print_summary(report)
        return bundle_dir

    log.info("final training on all %d frames of %s and the other datasets", len(target), target.root)
    full = with_variants(MixedDataset(mixed.parts, mixed.factors, "train"), cv_index, on_real, pasted, seed)
    if pseudo is not None:
        from training.model_bundle import load_bundle
        from training.pseudo_labels import label_frames

        teacher = load_bundle(args.teacher, device=device)
        labelled = label_frames(teacher, Path(pseudo.path), frame_shape, progress)
        full = _with_part(full, labelled, pseudo.factor)
    final_runs = _train_pair(args, tasks, runs / "final", (full, target.subset([])))
    net = {task: init_weights(str(final_runs[task]), task) for task in tasks}
    post = scores["postprocessed"]
    cv_summary = {
        "folds": args.folds,
        "data": str(Path(target.root).resolve()),
        "images": len(target),
        "mean_dice": post["mean_dice"],
        "empty_baseline_dice": post["empty_baseline_dice"],
        "false_mask_rate": post["false_mask_rate"],
        "frame_recall": post["frame"]["recall"],
    }
    provenance = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": resolved_specs([str(d) for d in args.data]),
        "init": args.init,
        "recipe": _recipe(args),
        "cross_validation": cv_summary,
        "tuning": {
            "on": "all out-of-fold probabilities",
            "gate_grid": list(GATE_THRESHOLDS) if "classifier" in tasks else [0.0],
            "choices": [dataclasses.asdict(c) for c in choices],
        },
    }
    save_bundle(
        bundle_dir,
        name=args.name or bundle_dir.name,
        description=args.description
        or f"classifier-gated ResUNet trained on {', '.join(str(s) for s in specs)}; "
        f"{args.folds}-fold cross-validated on {Path(target.root).name}",
        class_ids=class_ids,
        class_names=class_names,
        classifier_config=net["classifier"][0] if "classifier" in net else None,
        classifier_state=net["classifier"][1] if "classifier" in net else None,
        segmenter_config=net["segmenter"][0],
        segmenter_state=net["segmenter"][1],
        postprocess=final_params,
        provenance=provenance,
    )
    report["created"] = provenance["created"]
    _write_report(bundle_dir, report)
    from training.drift_reference import record_for_bundle

    record_for_bundle(bundle_dir, [str(s) for s in specs])
    _print_summary(report)
    return bundle_dir


def _report(
    args: argparse.Namespace,
    target: Any,
    tasks: list[str],
    class_ids: list[int],
    class_names: dict[int, str],
    scores: dict[str, Any],
    perturbed: dict[str, float],
    final_params: Any,
    assignment: np.ndarray,
) -> dict[str, Any]:
    bundle_dir = Path(args.out)
    post = scores["postprocessed"]
    return {
        "model": {
            "name": args.name or bundle_dir.name,
            "path": str(bundle_dir.resolve()),
            "class_ids": class_ids,
            "class_names": {str(c): class_names[c] for c in class_ids},
            "classifier": "classifier" in tasks,
        },
        "data": {
            "path": str(Path(target.root).resolve()),
            "layout": target.layout,
            "split": f"{args.folds}-fold cross-validation",
        },
        "images": len(target),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": (
            "out-of-fold predictions of networks trained without the fold; post-processing of each "
            "fold tuned on the other folds only (nested); last epoch kept, no choice made on held-out frames"
        ),
        "recipe": _recipe(args),
        "postprocess": final_params.to_json(),
        "auc_score": "classifier probability" if "classifier" in tasks else "max pixel probability",
        "summary": {
            "mean_dice_raw": scores["raw"]["mean_dice"],
            "mean_dice": post["mean_dice"],
            "empty_baseline_dice": post["empty_baseline_dice"],
            "false_mask_rate": post["false_mask_rate"],
            "frame_recall": post["frame"]["recall"],
            "miou_raw": scores["raw"]["pixel"]["miou_with_background"],
            "miou": post["pixel"]["miou_with_background"],
        },
        **scores,
        "robustness": robustness_summary(post["mean_dice"], perturbed),
        "cross_validation": {
            "fold_of_image": {target.image_ids[i]: int(assignment[i]) for i in range(len(target))},
        },
    }


def _print_summary(report: dict[str, Any]) -> None:
    from training.evaluate import format_report

    s = report["summary"]
    print(format_report(report))
    print(
        f"cross-validated mean Dice {s['mean_dice']:.4f} against {s['empty_baseline_dice']:.4f} for "
        f"all-empty; false masks on {s['false_mask_rate']:.1%} of defect-free pairs; "
        f"defective-frame recall {s['frame_recall']:.2f}"
    )


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "preset",
        "epochs",
        "classifier_epochs",
        "batch_size",
        "lr",
        "balanced",
        "augment",
        "seed",
        "folds",
        "synthetic_on_real",
        "real_paste",
        "pseudo_label",
        "teacher",
    )
    recipe = {k: getattr(args, k, None) for k in keys}
    recipe["crop"] = list(args.crop) if getattr(args, "crop", None) else None
    return recipe


def _write_report(bundle_dir: Path, report: dict[str, Any]) -> None:
    from training.eval_plots import plot_report
    from training.json_files import write_json
    from training.model_bundle import METRICS_JSON
    from training.train import EVAL_PLOT_FILE

    write_json(bundle_dir / METRICS_JSON, report)
    plot_report(report, bundle_dir / EVAL_PLOT_FILE)
