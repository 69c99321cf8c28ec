"""Library of real Severstal defect shapes, compact enough to ship with the product.

The synthetic camera draws its defects inside real annotation shapes, so sizes,
aspect ratios, component counts and across-width positions follow the real
distribution. The library holds, for every real (frame, class) mask of
``labels/train_rle_subset.csv``, its outline as OpenCV contours (outer and hole
contours together: one ``cv2.fillPoly`` call with all of them reproduces the
real mask pixel for pixel), plus the per-frame class co-occurrence counts of
``labels/class_presence_all_train.csv``.

Rebuild (needs the shared Severstal sample; the product never does):

    python -m producers.defect_shapes --out producers/data/defect_shapes.npz
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from steelcore import exit_codes
from steelcore.paths import SEVERSTAL_SAMPLE_DIR
from steelcore.severstal import CLASS_IDS, FRAME_SHAPE, NUM_CLASSES

log = logging.getLogger(__name__)

LIBRARY_PATH = Path(__file__).resolve().parent / "data" / "defect_shapes.npz"
LIBRARY_FORMAT = 1
REAL_MASKS_CSV = SEVERSTAL_SAMPLE_DIR / "labels" / "train_rle_subset.csv"
REAL_PRESENCE_CSV = SEVERSTAL_SAMPLE_DIR / "labels" / "class_presence_all_train.csv"


def combo_index(present: Sequence[bool]) -> int:
    """Index of a class-presence combination: bit c-1 is set when class c is present."""
    return sum(1 << i for i, flag in enumerate(present) if flag)


def combo_classes(index: int) -> tuple[int, ...]:
    """The class ids present in combination ``index`` (inverse of ``combo_index``)."""
    return tuple(c for i, c in enumerate(CLASS_IDS) if index >> i & 1)


@dataclass(frozen=True)
class ShapeLibrary:
    """Real mask outlines grouped by (frame, class), plus real frame-level class statistics.

    Group ``g`` is one real frame's mask of class ``group_class[g]``; its contours are
    ``contour_offsets[group_offsets[g]:group_offsets[g + 1] + 1]`` into ``vertices`` (x, y).
    ``group_area``, ``group_centroid_x`` and ``group_components`` were measured on the exact
    decoded mask (8-connectivity) and serve as the real side of the statistics report.
    """

    combo_counts: np.ndarray  # int64 [2**NUM_CLASSES]: real frames per presence combination
    group_class: np.ndarray  # int8 [G]
    group_offsets: np.ndarray  # int32 [G + 1] into the contour table
    contour_offsets: np.ndarray  # int32 [K + 1] into vertices
    vertices: np.ndarray  # int32 [V, 2] absolute frame coordinates (x, y)
    group_area: np.ndarray  # int32 [G]
    group_centroid_x: np.ndarray  # float32 [G]
    group_components: np.ndarray  # int16 [G]
    source_digest: str  # sha256 of the two source CSVs, to tell which labels built it

    @property
    def num_groups(self) -> int:
        return int(self.group_class.size)

    def groups_of(self, class_id: int) -> np.ndarray:
        """Indices of the groups (real masks) of one class."""
        if class_id not in CLASS_IDS:
            raise ValueError(f"class id {class_id} not in {CLASS_IDS}")
        return np.flatnonzero(self.group_class == class_id)

    def contours(self, group: int) -> list[np.ndarray]:
        """The contours of one group as int32 (N, 2) arrays of (x, y) in frame coordinates."""
        first, last = int(self.group_offsets[group]), int(self.group_offsets[group + 1])
        bounds = self.contour_offsets[first : last + 1]
        return [self.vertices[a:b] for a, b in itertools.pairwise(bounds)]

    def real_frame_frequencies(self) -> dict[int, float]:
        """Share of real frames that contain each class (from the presence table)."""
        total = self.combo_counts.sum()
        return {
            c: float(sum(n for k, n in enumerate(self.combo_counts) if k >> i & 1) / total)
            for i, c in enumerate(CLASS_IDS)
        }


def rasterize(contours: Sequence[np.ndarray], shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """Fill contours (outer and hole ones together, even-odd) into a uint8 0/1 mask of ``shape``."""
    out = np.zeros(shape, dtype=np.uint8)
    if contours:
        cv2.fillPoly(out, [np.ascontiguousarray(c, dtype=np.int32) for c in contours], 1)
    return out


def _file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_presence_counts(presence_csv: Path) -> np.ndarray:
    """Frames per class-presence combination from a ``ImageId_ClassId,1,2,3,4`` flag table."""
    counts = np.zeros(1 << NUM_CLASSES, dtype=np.int64)
    with presence_csv.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        expected = [str(c) for c in CLASS_IDS]
        if header[1:] != expected:
            raise ValueError(f"{presence_csv}: expected columns ImageId,{','.join(expected)}; got {header}")
        for row in reader:
            if not row:
                continue
            try:
                flags = [int(v) != 0 for v in row[1:]]
            except ValueError:
                raise ValueError(f"{presence_csv}:{reader.line_num}: non-integer presence flag") from None
            if len(flags) != NUM_CLASSES:
                raise ValueError(f"{presence_csv}:{reader.line_num}: expected {NUM_CLASSES} flags")
            counts[combo_index(flags)] += 1
    if counts.sum() == 0:
        raise ValueError(f"{presence_csv}: no frames")
    return counts


def build_library(masks_csv: Path = REAL_MASKS_CSV, presence_csv: Path = REAL_PRESENCE_CSV) -> ShapeLibrary:
    """Build the library from real labels: every (frame, class) mask becomes one group of contours."""
    from steelcore.kaggle_csv import read_labels
    from steelcore.rle import decode

    for path in (masks_csv, presence_csv):
        if not path.is_file():
            raise ValueError(f"real label file {path} not found (the shared Severstal sample is needed)")
    labels = read_labels(masks_csv, validate_shape=FRAME_SHAPE)
    group_class: list[int] = []
    group_offsets = [0]
    contour_offsets = [0]
    vertices: list[np.ndarray] = []
    area: list[int] = []
    centroid_x: list[float] = []
    components: list[int] = []
    # Sorted so a rebuild from the same CSV gives the same file, byte for byte.
    for image_id in sorted(labels):
        for class_id, encoded in zip(CLASS_IDS, labels[image_id], strict=True):
            if not encoded:
                continue
            mask = decode(encoded)
            contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            if not np.array_equal(rasterize([c.reshape(-1, 2) for c in contours]), mask):
                raise ValueError(f"{image_id} class {class_id}: contours do not reproduce the mask")
            for contour in contours:
                vertices.append(contour.reshape(-1, 2))
                contour_offsets.append(contour_offsets[-1] + len(contour))
            group_class.append(class_id)
            group_offsets.append(group_offsets[-1] + len(contours))
            xs = np.nonzero(mask)[1]
            area.append(int(xs.size))
            centroid_x.append(float(xs.mean()))
            components.append(cv2.connectedComponents(mask, connectivity=8)[0] - 1)
    if not group_class:
        raise ValueError(f"{masks_csv}: no masks")
    return ShapeLibrary(
        combo_counts=read_presence_counts(presence_csv),
        group_class=np.asarray(group_class, dtype=np.int8),
        group_offsets=np.asarray(group_offsets, dtype=np.int32),
        contour_offsets=np.asarray(contour_offsets, dtype=np.int32),
        vertices=np.concatenate(vertices).astype(np.int32),
        group_area=np.asarray(area, dtype=np.int32),
        group_centroid_x=np.asarray(centroid_x, dtype=np.float32),
        group_components=np.asarray(components, dtype=np.int16),
        source_digest=_file_digest([masks_csv, presence_csv]),
    )


def save_library(library: ShapeLibrary, path: Path = LIBRARY_PATH) -> Path:
    """Write the library as a compressed .npz (vertices delta-coded per contour: they compress ~5x)."""
    starts = library.contour_offsets[:-1]
    deltas = np.diff(library.vertices, axis=0, prepend=library.vertices[:1])
    deltas[starts] = library.vertices[starts]  # each contour restarts from an absolute point
    if np.abs(deltas).max() > np.iinfo(np.int16).max:
        raise ValueError("vertex step does not fit int16")
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        format=np.int32(LIBRARY_FORMAT),
        combo_counts=library.combo_counts,
        group_class=library.group_class,
        group_offsets=library.group_offsets,
        contour_offsets=library.contour_offsets,
        vertex_deltas=deltas.astype(np.int16),
        group_area=library.group_area,
        group_centroid_x=library.group_centroid_x,
        group_components=library.group_components,
        source_digest=np.str_(library.source_digest),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def load_library(path: Path = LIBRARY_PATH) -> ShapeLibrary:
    """Read a library written by ``save_library``; ValueError if it is missing or of another format."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"defect shape library {path} not found; rebuild it with `python -m {__name__}`")
    with np.load(path) as data:
        if int(data["format"]) != LIBRARY_FORMAT:
            raise ValueError(f"{path}: library format {int(data['format'])}, expected {LIBRARY_FORMAT}")
        contour_offsets = data["contour_offsets"].astype(np.int32)
        deltas = data["vertex_deltas"].astype(np.int32)
        # Undo the delta coding per contour: cumulative sum, minus the sum up to each contour start.
        absolute = np.cumsum(deltas, axis=0)
        starts = contour_offsets[:-1]
        before = np.zeros_like(absolute[starts])
        nonzero = starts > 0
        before[nonzero] = absolute[starts[nonzero] - 1]
        lengths = np.diff(contour_offsets)
        vertices = absolute - np.repeat(before, lengths, axis=0)
        return ShapeLibrary(
            combo_counts=data["combo_counts"].astype(np.int64),
            group_class=data["group_class"].astype(np.int8),
            group_offsets=data["group_offsets"].astype(np.int32),
            contour_offsets=contour_offsets,
            vertices=vertices,
            group_area=data["group_area"].astype(np.int32),
            group_centroid_x=data["group_centroid_x"].astype(np.float32),
            group_components=data["group_components"].astype(np.int16),
            source_digest=str(data["source_digest"]),
        )


@lru_cache(maxsize=1)
def default_library() -> ShapeLibrary:
    """The shipped library, read once per process."""
    return load_library(LIBRARY_PATH)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__name__}", description="rebuild the defect shape library"
    )
    parser.add_argument("--masks", type=Path, default=REAL_MASKS_CSV, help="real RLE masks (Kaggle CSV)")
    parser.add_argument("--presence", type=Path, default=REAL_PRESENCE_CSV, help="per-class presence flags")
    parser.add_argument("--out", type=Path, default=LIBRARY_PATH)
    args = parser.parse_args(argv)
    try:
        library = build_library(args.masks, args.presence)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    path = save_library(library, args.out)
    print(
        f"{path}: {library.num_groups} masks, {library.contour_offsets.size - 1} contours, "
        f"{len(library.vertices)} vertices, {int(library.combo_counts.sum())} frames of presence flags, "
        f"{path.stat().st_size / 1e6:.2f} MB"
    )
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
