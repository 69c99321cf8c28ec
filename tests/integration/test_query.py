"""History queries and `steel query` on seeded data in the embedded Postgres (tests/conftest.py).

Expected results are computed here from the seed itself, with plain Python filters.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, text

from steelcore import exit_codes, rle
from steelcore.kaggle_csv import read_labels
from steelcore.postgres import migrate
from steelcore.postgres.defect_history import (
    DefectFilters,
    coil_summary,
    count_defects,
    explain_plan,
    query_defects,
)
from steelcore.postgres.defect_writes import DefectStore
from steelcore.postgres.engine import create_db_engine
from steelcore.postgres.frame_records import DefectRecord, FrameRecord
from steelcore.postgres.scratch import scratch_database
from steelcore.settings import Settings
from steelcore.severstal import FRAME_SHAPE
from workers import query_cli

pytestmark = pytest.mark.integration

T0 = datetime(2025, 5, 4, 6, 0, tzinfo=UTC)
N_FRAMES = 60


@dataclass(frozen=True)
class Seeded:
    frame: FrameRecord
    defect: DefectRecord
    rect: tuple[int, int, int, int]  # y0, y1, x0, x1 of the mask rectangle (half-open)


def _mask(rect: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = rect
    mask = np.zeros(FRAME_SHAPE, dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _seed_records() -> tuple[list[FrameRecord], list[Seeded]]:
    frames, seeded = [], []
    for i in range(N_FRAMES):
        coil = ("K-A", "K-B", "K-C")[i // 20]
        classes = sorted({1 + i % 4} | ({3} if i % 5 == 0 else set()))
        found = []
        for c in classes:
            rect = (10 + c, 10 + c + 4 + (i % 7) * 3, 100 * c + i, 100 * c + i + 10 + 5 * c)
            record = DefectRecord.from_mask(c, _mask(rect), 0.5 + (i % 5) * 0.1)
            assert record is not None
            found.append((record, rect))
        frame = FrameRecord(
            frame_id=f"{i:09x}.jpg",  # Kaggle-style image ids
            line_id="L1" if i < 40 else "L2",
            camera_id="C1" if i % 2 == 0 else "C2",
            coil_id=coil,
            position_m=(i % 20) * 2.0,
            captured_at=T0 + timedelta(minutes=i),
            received_at=T0 + timedelta(minutes=i, milliseconds=30),
            model_name="default",
            model_version="1",
            defects=tuple(d for d, _ in found),
        )
        frames.append(frame)
        seeded.extend(Seeded(frame, d, rect) for d, rect in found)
    return frames, seeded


def _new_database(postgres_url: str) -> contextlib.AbstractContextManager[str]:
    """A new, empty database on the session's server, dropped afterwards."""
    return scratch_database(postgres_url, "steel_query")


@pytest.fixture(scope="module")
def database(postgres_url: str) -> Iterator[str]:
    with _new_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="module")
def seed(database: str) -> list[Seeded]:
    migrate.upgrade(database)
    frames, seeded = _seed_records()
    engine = create_db_engine(database)
    try:
        assert len(DefectStore(engine).write_batch(frames).new_frame_ids) == N_FRAMES
    finally:
        engine.dispose()
    return seeded


@pytest.fixture()
def engine(database: str, seed: list[Seeded]) -> Iterator[Engine]:
    eng = create_db_engine(database)
    try:
        yield eng
    finally:
        eng.dispose()


def _keys(rows) -> set[tuple[str, int]]:
    return {(r.frame_id, r.class_id) for r in rows}


def _seed_keys(seed: list[Seeded], keep) -> set[tuple[str, int]]:
    return {(s.frame.frame_id, s.defect.class_id) for s in seed if keep(s)}


def _severity(s: Seeded) -> float:
    reference = Settings().alarm_min_area_px[s.defect.class_id - 1]
    return s.defect.probability * min(1.0, s.defect.area_px / (10 * reference))


def test_without_filters_every_defect_comes_back_newest_first(engine: Engine, seed: list[Seeded]) -> None:
    rows = query_defects(engine, DefectFilters(limit=None))
    assert _keys(rows) == _seed_keys(seed, lambda s: True)
    assert len(rows) == len(seed) == count_defects(engine)
    times = [r.captured_at for r in rows]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        (
            DefectFilters(
                time_from=T0 + timedelta(minutes=10), time_to=T0 + timedelta(minutes=25), limit=None
            ),
            lambda s: 10 <= (s.frame.captured_at - T0) / timedelta(minutes=1) < 25,
        ),
        (DefectFilters(line_id="L2", limit=None), lambda s: s.frame.line_id == "L2"),
        (DefectFilters(camera_id="C2", limit=None), lambda s: s.frame.camera_id == "C2"),
        (
            DefectFilters(line_id="L1", camera_id="C1", limit=None),
            lambda s: s.frame.line_id == "L1" and s.frame.camera_id == "C1",
        ),
        (DefectFilters(coil_id="K-B", limit=None), lambda s: s.frame.coil_id == "K-B"),
        (DefectFilters(class_ids=(3,), limit=None), lambda s: s.defect.class_id == 3),
        (DefectFilters(class_ids=(1, 4), limit=None), lambda s: s.defect.class_id in (1, 4)),
        (DefectFilters(min_area=150, limit=None), lambda s: s.defect.area_px >= 150),
        (
            DefectFilters(coil_id="K-A", class_ids=(3,), min_area=100, limit=None),
            lambda s: s.frame.coil_id == "K-A" and s.defect.class_id == 3 and s.defect.area_px >= 100,
        ),
    ],
    ids=["time", "line", "camera", "line+camera", "coil", "class", "classes", "min_area", "combined"],
)
def test_each_filter_narrows_to_exactly_the_matching_defects(
    engine: Engine, seed: list[Seeded], filters: DefectFilters, keep
) -> None:
    expected = _seed_keys(seed, keep)
    assert 0 < len(expected) < len(seed), "the seed must make this filter meaningful"
    assert _keys(query_defects(engine, filters)) == expected
    assert count_defects(engine, filters) == len(expected)


def test_min_severity_keeps_the_more_severe_half(engine: Engine, seed: list[Seeded]) -> None:
    threshold = float(np.median([_severity(s) for s in seed]))
    expected = _seed_keys(seed, lambda s: _severity(s) >= threshold * (1 + 1e-6))
    rows = query_defects(engine, DefectFilters(min_severity=threshold * (1 + 1e-6), limit=None))
    assert 0 < len(expected) < len(seed)
    assert _keys(rows) == expected


def test_pages_do_not_overlap_and_cover_everything(engine: Engine, seed: list[Seeded]) -> None:
    everything = query_defects(engine, DefectFilters(limit=None))
    pages = [query_defects(engine, DefectFilters(limit=7, offset=o)) for o in range(0, len(seed), 7)]
    assert [r.defect_id for page in pages for r in page] == [r.defect_id for r in everything]
    assert all(len(p) == 7 for p in pages[:-1])


def test_rows_carry_the_frame_context(engine: Engine, seed: list[Seeded]) -> None:
    want = seed[17]
    rows = query_defects(engine, DefectFilters(coil_id=want.frame.coil_id, class_ids=(want.defect.class_id,)))
    row = next(r for r in rows if r.frame_id == want.frame.frame_id)
    assert row.position_m == pytest.approx(want.frame.position_m)
    assert row.bbox == want.defect.bbox and row.area_px == want.defect.area_px
    assert (row.height, row.width) == FRAME_SHAPE
    assert row.captured_at == want.frame.captured_at


def test_coil_summary_counts_defects_per_class_over_the_coil_length(
    engine: Engine, seed: list[Seeded]
) -> None:
    summaries = {s.coil_id: s for s in coil_summary(engine)}
    assert set(summaries) == {"K-A", "K-B", "K-C"}
    for coil, summary in summaries.items():
        mine = [s for s in seed if s.frame.coil_id == coil]
        positions = {s.frame.frame_id: s.frame.position_m for s in mine}
        assert summary.frames == 20  # every seeded frame has at least one defect
        assert summary.length_m == pytest.approx(max(positions.values()) - min(positions.values()))
        assert summary.defects_by_class == dict(sorted(Counter(s.defect.class_id for s in mine).items()))
        for class_id, density in summary.per_100m().items():
            assert density == pytest.approx(summary.defects_by_class[class_id] * 100 / summary.length_m)
    only_l2 = coil_summary(engine, line_id="L2")
    assert [s.coil_id for s in only_l2] == ["K-C"]
    # The dashboard's cap is applied by the database, and the kept coils keep their counts.
    assert coil_summary(engine, limit=2) == [summaries["K-A"], summaries["K-B"]]
    with pytest.raises(ValueError, match="limit"):
        coil_summary(engine, limit=0)


def _cli(database: str, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    query_cli.add_arguments(parser)
    return query_cli.run(parser.parse_args([*argv, "--db-url", database]))


def test_kaggle_export_decodes_back_to_the_stored_masks(
    database: str, seed: list[Seeded], tmp_path: Path
) -> None:
    out = tmp_path / "k-a.csv"
    assert _cli(database, "--coil", "K-A", "--format", "kaggle", "--limit", "0", "--out", str(out)) == 0

    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["ImageId", "ClassId", "EncodedPixels"]
    expected = {(s.frame.frame_id, s.defect.class_id): s.rect for s in seed if s.frame.coil_id == "K-A"}
    assert {(r["ImageId"], int(r["ClassId"])) for r in rows} == set(expected)
    for r in rows:
        decoded = rle.decode(r["EncodedPixels"], FRAME_SHAPE)
        np.testing.assert_array_equal(decoded, _mask(expected[(r["ImageId"], int(r["ClassId"]))]))
    labels = read_labels(out)  # the project's own reader accepts the file
    assert set(labels) == {frame_id for frame_id, _ in expected}


def test_csv_export_has_one_row_per_defect(database: str, seed: list[Seeded], tmp_path: Path) -> None:
    out = tmp_path / "class3.csv"
    assert _cli(database, "--class", "3", "--format", "csv", "--limit", "0", "--out", str(out)) == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["frame_id"], int(r["class_id"])) for r in rows} == _seed_keys(
        seed, lambda s: s.defect.class_id == 3
    )
    by_key = {(s.frame.frame_id, s.defect.class_id): s for s in seed}
    for r in rows:
        s = by_key[(r["frame_id"], 3)]
        assert int(r["area_px"]) == s.defect.area_px and r["coil_id"] == s.frame.coil_id
        assert datetime.fromisoformat(r["captured_at"]) == s.frame.captured_at


def test_table_output_reports_shown_and_matching_counts(
    database: str, seed: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(database, "--line", "L2", "--limit", "5") == 0
    out = capsys.readouterr().out
    total = len(_seed_keys(seed, lambda s: s.frame.line_id == "L2"))
    assert out.rstrip().endswith(f"5 of {total} matching defects")
    assert len(out.strip().splitlines()) == 1 + 5 + 1


def test_summary_output_lists_each_coil(
    database: str, seed: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(database, "--summary") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("coil") and [line.split()[0] for line in lines[1:]] == ["K-A", "K-B", "K-C"]


def test_a_database_without_the_schema_is_unavailable(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with _new_database(postgres_url) as blank:
        assert _cli(blank) == exit_codes.UNAVAILABLE
    assert "no defect tables" in capsys.readouterr().err


# --- the planner uses the indexes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def large(postgres_url: str) -> Iterator[Engine]:
    """About 12,000 defects over 100 hours, analysed, so the planner's choices are realistic."""
    with _new_database(postgres_url) as url:
        migrate.upgrade(url)
        engine = create_db_engine(url)
        try:
            _fill(engine)
            yield engine
        finally:
            engine.dispose()


def _fill(engine: Engine) -> None:
    store = DefectStore(engine)
    frames = [
        FrameRecord(
            frame_id=f"p{i:06d}",
            line_id=f"L{i % 3}",
            camera_id=f"C{i % 4}",
            coil_id=f"K{i // 300}",
            position_m=(i % 300) * 1.5,
            captured_at=T0 + timedelta(seconds=60 * i),
            received_at=T0 + timedelta(seconds=60 * i),
            model_name="default",
            model_version="1",
            # Classes 1-3 are common, class 4 rare (4 % of frames), as on a real line.
            defects=tuple(
                DefectRecord(c, "1 4", 4 + i % 900, (0, 0, 0, 3), 0.8)
                for c in (1 + i % 3, 1 + (i + 1) % 3, *((4,) if i % 25 == 0 else ()))
            ),
        )
        for i in range(6000)
    ]
    for start in range(0, len(frames), 500):
        store.write_batch(frames[start : start + 500])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        (
            DefectFilters(time_from=T0 + timedelta(hours=50), time_to=T0 + timedelta(hours=51)),
            "ix_defects_captured_at",
        ),
        (
            DefectFilters(class_ids=(4,), time_from=T0, time_to=T0 + timedelta(hours=50)),
            "ix_defects_class_id_captured_at",
        ),
        (DefectFilters(line_id="L1", camera_id="C1"), "ix_defects_line_id_camera_id_captured_at"),
        (DefectFilters(coil_id="K7"), "ix_defects_coil_id_class_id"),
    ],
    ids=["time", "rare class+time", "line+camera", "coil"],
)
def test_history_queries_use_their_index(large: Engine, filters: DefectFilters, index: str) -> None:
    plan = explain_plan(large, filters)
    assert "Seq Scan on defects" not in plan, plan
    assert index in plan, plan
