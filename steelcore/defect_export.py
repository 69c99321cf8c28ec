"""Stored defects as files: the one CSV layout and the one Kaggle layout that `steel query` and the
dashboard's history page both write, so an engineer gets the same columns from either.

Text cells pass through steelcore.csv_safety (no cell a spreadsheet would run as a formula); every
Kaggle-format file, the retraining dataset's train.csv included, is written by
steelcore.kaggle_csv.write_submission (it refuses duplicate image and class pairs).
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterable
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from steelcore.csv_safety import safe_row
from steelcore.kaggle_csv import write_submission

if TYPE_CHECKING:
    from steelcore.postgres.defect_history import DefectRow

CSV_COLUMNS = (
    "defect_id",
    "frame_id",
    "class_id",
    "captured_at",
    "line_id",
    "camera_id",
    "coil_id",
    "position_m",
    "area_px",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "probability",
    "severity",
    "height",
    "width",
    "model_name",
    "model_version",
    "image_ref",
    "rle",
)


def write_csv(stream: TextIO, rows: Iterable[DefectRow]) -> None:
    """One line per defect under a CSV_COLUMNS header; times as ISO-8601 in UTC."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(safe_row(_csv_values(r)))


def _csv_values(r: DefectRow) -> list[object]:
    values: dict[str, object] = dict(vars(r))
    values["bbox_x0"], values["bbox_y0"], values["bbox_x1"], values["bbox_y1"] = r.bbox
    values["captured_at"] = r.captured_at.astimezone(UTC).isoformat()
    return [values[c] for c in CSV_COLUMNS]


def kaggle_rows(rows: Iterable[DefectRow]) -> list[tuple[str, int, str]]:
    """(ImageId, ClassId, EncodedPixels) of each defect; the ImageId is the frame id."""
    return [(r.frame_id, r.class_id, r.rle) for r in rows]


def write_kaggle(path: Path, rows: Iterable[DefectRow]) -> None:
    """The defects as a Kaggle CSV at ``path``, replaced atomically."""
    write_submission(path, kaggle_rows(rows))


def kaggle_text(rows: Iterable[DefectRow]) -> str:
    """The same file as write_kaggle, as text (for standard output or a download)."""
    return submission_text(kaggle_rows(rows))


def submission_text(rows: Iterable[tuple[str, int, str]]) -> str:
    """What write_submission would write for ``rows``, as text."""
    # write_submission only writes files (atomically): go through a temporary one.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "submission.csv"
        write_submission(path, rows)
        return path.read_text(encoding="utf-8")
