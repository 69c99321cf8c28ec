"""`steel synth`: write a synthetic dataset in Kaggle's Severstal layout.

    steel synth --out data/synth --n 5000 --seed 0 --jobs 2

writes ``DIR/train_images/<id>.jpg`` (JPEG quality as the camera's wire format), ``DIR/train.csv``
(``ImageId,ClassId,EncodedPixels``, one row per class present, as Kaggle) and ``DIR/synth.json``
(the generator's parameters and per-class counts). The masks in train.csv are the camera's exact
masks; frame ``i`` is ``SyntheticCamera(seed).frame(i)``, so any row can be regenerated.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from steelcore import exit_codes
from steelcore.kaggle_csv import IMAGE_DIRS, LABELS_FILE
from steelcore.severstal import CLASS_IDS

log = logging.getLogger(__name__)

IMAGE_DIR = IMAGE_DIRS[0]
SUMMARY_JSON = "synth.json"


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the dataset's content."""

    n: int
    seed: int = 0
    class_frequencies: tuple[float, ...] | None = None  # per class 1..4; None mirrors Severstal
    edge_probability: float | None = None  # None: the camera's default
    mark_rate: float | None = None  # None: the camera's default
    start_index: int = 0

    def camera_kwargs(self) -> dict:
        kwargs: dict = {"seed": self.seed, "class_frequencies": self.class_frequencies}
        if self.edge_probability is not None:
            kwargs["edge_probability"] = self.edge_probability
        if self.mark_rate is not None:
            kwargs["mark_rate"] = self.mark_rate
        return kwargs


@dataclass
class SynthSummary:
    out: str
    config: dict
    frames: int = 0
    clean_frames: int = 0
    frames_per_class: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    frames_per_second: float = 0.0
    jobs: int = 1


_WORKER_CAMERA = None
_WORKER_IMAGES: Path | None = None


def _init_worker(camera_kwargs: dict, image_dir: str) -> None:
    global _WORKER_CAMERA, _WORKER_IMAGES
    from producers.synthetic_camera import SyntheticCamera

    _WORKER_CAMERA = SyntheticCamera(**camera_kwargs)
    _WORKER_IMAGES = Path(image_dir)


def _write_frame(index: int) -> tuple[str, list[str]]:
    """Render frame ``index``, write its JPEG and return (ImageId, one RLE per class)."""
    from steelcore.frame_message import encode_image
    from steelcore.rle import encode_stack

    assert _WORKER_CAMERA is not None and _WORKER_IMAGES is not None, "worker not initialised"
    frame = _WORKER_CAMERA.frame(index)
    (_WORKER_IMAGES / frame.file_name).write_bytes(encode_image(frame.image, "jpeg"))
    return frame.file_name, encode_stack(frame.masks)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    image_dir = out / IMAGE_DIR
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    stale = sorted(image_dir.glob("*.jpg")) if image_dir.is_dir() else []
    if stale or (out / LABELS_FILE).exists():
        if not overwrite:
            raise ValueError(
                f"{out} already holds a dataset ({len(stale)} images); choose a new --out or pass --overwrite"
            )
        # Old frames without a row in the new train.csv would silently read as defect-free.
        for path in stale:
            path.unlink()
        for name in (LABELS_FILE, SUMMARY_JSON):
            (out / name).unlink(missing_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    return image_dir


def _results(config: SynthConfig, image_dir: Path, jobs: int) -> Iterator[tuple[str, list[str]]]:
    indices = range(config.start_index, config.start_index + config.n)
    if jobs == 1:
        _init_worker(config.camera_kwargs(), str(image_dir))
        yield from map(_write_frame, indices)
        return
    # spawn, not fork: a forked OpenCV thread pool can deadlock the child.
    context = multiprocessing.get_context("spawn")
    with context.Pool(
        jobs, initializer=_init_worker, initargs=(config.camera_kwargs(), str(image_dir))
    ) as pool:
        yield from pool.imap(_write_frame, indices, chunksize=8)


def write_dataset(
    out: str | Path, config: SynthConfig, jobs: int = 1, overwrite: bool = False, progress: bool = True
) -> SynthSummary:
    """Write ``config.n`` frames to ``out`` in Kaggle layout; returns what was written."""
    from tqdm import tqdm

    from producers.synthetic_camera import SyntheticCamera
    from steelcore.kaggle_csv import write_submission

    if config.n <= 0:
        raise ValueError(f"--n must be positive, got {config.n}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if config.start_index < 0:
        raise ValueError(f"--start-index must be >= 0, got {config.start_index}")
    SyntheticCamera(**config.camera_kwargs())  # validate the parameters before touching the disk
    out = Path(out)
    image_dir = _prepare_out(out, overwrite)
    summary = SynthSummary(out=str(out), config=asdict(config), jobs=jobs)
    counts = dict.fromkeys(CLASS_IDS, 0)
    rows: list[tuple[str, int, str]] = []
    started = time.perf_counter()
    results = _results(config, image_dir, jobs)
    for image_id, rles in tqdm(results, total=config.n, desc="synth", unit="frame", disable=not progress):
        present = [(image_id, c, r) for c, r in zip(CLASS_IDS, rles, strict=True) if r]
        rows.extend(present)
        for _, class_id, _ in present:
            counts[class_id] += 1
        summary.frames += 1
        summary.clean_frames += not present
    write_submission(out / LABELS_FILE, rows)
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.frames_per_second = round(summary.frames / max(summary.seconds, 1e-9), 2)
    summary.frames_per_class = counts
    (out / SUMMARY_JSON).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _frequencies(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {len(CLASS_IDS)} comma-separated numbers, got {text!r}"
        ) from None
    if len(values) != len(CLASS_IDS):
        raise argparse.ArgumentTypeError(f"expected {len(CLASS_IDS)} comma-separated numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--n", type=int, required=True, help="number of frames")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (frame i is the same for a seed)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--start-index", type=int, default=0, help="first frame index (to extend a dataset)")
    parser.add_argument(
        "--class-frequencies",
        type=_frequencies,
        default=None,
        metavar="F1,F2,F3,F4",
        help="share of frames containing each class (default: as in Severstal)",
    )
    parser.add_argument(
        "--edge-probability", type=float, default=None, help="share of frames at a strip edge"
    )
    parser.add_argument("--mark-rate", type=float, default=None, help="mean harmless marks per frame")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = SynthConfig(
        n=args.n,
        seed=args.seed,
        class_frequencies=args.class_frequencies,
        edge_probability=args.edge_probability,
        mark_rate=args.mark_rate,
        start_index=args.start_index,
    )
    try:
        summary = write_dataset(
            args.out, config, jobs=args.jobs, overwrite=args.overwrite, progress=not args.no_progress
        )
    except ValueError as exc:
        print(f"steel synth: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    per_class = ", ".join(f"class {c}: {n}" for c, n in summary.frames_per_class.items())
    print(
        f"wrote {summary.frames} frames to {summary.out} in {summary.seconds:.1f} s "
        f"({summary.frames_per_second:.1f} frames/s, {summary.jobs} jobs); "
        f"{summary.clean_frames} clean; {per_class}"
    )
    return exit_codes.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="steel synth", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
