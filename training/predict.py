"""`steel predict`: a Kaggle submission CSV (ImageId,ClassId,EncodedPixels) for a folder of frames.

One row per (image, class) of the model, EncodedPixels empty when the class is absent; the RLE
covers each image's own size. Unreadable images fail the job and no CSV is written (a partial
submission would be silently scored as defect-free frames); every readable image is still read, so
the error names all the bad files at once instead of one per run.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from steelcore import exit_codes
from steelcore.settings import get_settings
from training.cli_options import add_network_run_options

BATCH_SIZE = 8


def predict_submission(
    images: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, int]:
    """Write the submission for every JPEG/PNG in images; return defect counts per class id (as str)."""
    from tqdm import tqdm

    from steelcore.kaggle_csv import write_submission
    from steelcore.postprocess import apply_postprocess
    from steelcore.rle import encode
    from training.inference import list_images, predict_folder
    from training.model_bundle import load_bundle

    paths = list_images(Path(images))
    bundle = load_bundle(model or get_settings().model_name, device=device)
    found: Counter[int] = Counter()
    unreadable: list[tuple[Path, str]] = []

    def rows() -> Iterator[tuple[str, int, str]]:
        with tqdm(total=len(paths), desc=f"predict {bundle.name}", unit="frame", disable=not progress) as bar:
            for batch_paths, cls, seg in predict_folder(bundle, paths, batch_size, unreadable):
                masks = apply_postprocess(cls, seg, bundle.postprocess)
                for path, image_masks in zip(batch_paths, masks, strict=True):
                    for class_id, mask in zip(bundle.class_ids, image_masks, strict=True):
                        encoded = encode(mask)
                        found[class_id] += bool(encoded)
                        yield path.name, class_id, encoded
                bar.update(len(batch_paths))
        if unreadable:  # raised inside the rows, so write_submission discards its half-written file
            raise ValueError(_unreadable_message(unreadable, len(paths), Path(out)))

    write_submission(out, rows())
    counts = {str(c): found[c] for c in bundle.class_ids}
    print(f"{len(paths)} images -> {out}; images with a defect per class: {counts}")
    return counts


def _unreadable_message(unreadable: list[tuple[Path, str]], total: int, out: Path, shown: int = 20) -> str:
    lines = [f"{len(unreadable)} of {total} images are unreadable; {out} was not written:"]
    lines += [f"  {reason}" for _, reason in unreadable[:shown]]
    if len(unreadable) > shown:
        lines.append(f"  ... and {len(unreadable) - shown} more")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="folder of .jpg/.png frames")
    parser.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    parser.add_argument(
        "--model", help="bundle name or path (default: settings model_name, STEEL_MODEL_NAME)"
    )
    add_network_run_options(parser, BATCH_SIZE)


def run(args: argparse.Namespace) -> int:
    try:
        predict_submission(
            args.images,
            args.out,
            args.model,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device=args.device,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"steel predict: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    return exit_codes.OK
