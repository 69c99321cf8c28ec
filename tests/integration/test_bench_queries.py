"""`steel bench queries` end to end on a small history (no speed assertions: they live in the benchmark)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dashboard_seed import new_database
from sqlalchemy import text

from steelcore import exit_codes
from steelcore.cli import main
from steelcore.postgres.engine import create_db_engine
from steelcore.postgres.synthetic_history import DEFECTS_PER_FRAME, SeedShape, frames_for, seed_history

pytestmark = pytest.mark.integration


def test_the_seed_has_the_promised_shape(postgres_url: str) -> None:
    with new_database(postgres_url) as url:
        engine = create_db_engine(url)
        try:
            shape = SeedShape(frames=frames_for(5000), end=datetime(2025, 6, 1, tzinfo=UTC))
            seed_history(engine, shape)
            with engine.connect() as conn:
                frames, defects, rare, alarms, orphans = conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM frames), (SELECT count(*) FROM defects), "
                        "(SELECT count(*) FROM defects WHERE class_id = 4), (SELECT count(*) FROM alarms), "
                        "(SELECT count(*) FROM defects d JOIN frames f USING (frame_id) "
                        " WHERE d.captured_at <> f.captured_at OR d.coil_id <> f.coil_id)"
                    )
                ).one()
                newest = conn.execute(text("SELECT max(captured_at) FROM frames")).scalar_one()
        finally:
            engine.dispose()
    assert frames == shape.frames
    assert defects == pytest.approx(5000, rel=0.01) and defects / frames == pytest.approx(
        DEFECTS_PER_FRAME, rel=0.01
    )
    assert rare == pytest.approx(frames / 25, abs=1)
    assert alarms == pytest.approx(frames / 10, abs=1)
    assert orphans == 0  # the copied frame context matches, as the real store writes it
    assert shape.start <= newest <= shape.end


def test_steel_bench_queries_writes_json_and_a_table(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "queries.json"
    argv = ["bench", "queries", "--rows", "3000", "--repeats", "2", "--warmup", "0", "--json", str(out)]
    assert main([*argv, "--db-url", postgres_url]) == exit_codes.OK
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "queries" and payload["config"]["rows"] == 3000
    by_name = {r["query"]: r for r in payload["results"]}
    assert {"page, last 24 h", "count, last 24 h", "coil summary, line, 24 h", "live: alarm feed"} <= set(
        by_name
    )
    for result in payload["results"]:
        assert 0 < result["indexed"]["p50_us"] <= result["indexed"]["p95_us"]
    history = [r for r in payload["results"] if "defects_index" in r]
    assert history and all(r["ratio"] > 0 and r["no_index"]["p50_us"] > 0 for r in history)
    assert all(r["defects_index"].startswith(("ix_defects_", "pk_", "seq scan")) for r in history)
    assert by_name["page, last 24 h"]["rows"] == 25
    assert out.with_suffix(".png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "page, last 24 h" in printed
    with create_db_engine(postgres_url).connect() as conn:  # the scratch database is gone
        left = conn.execute(
            text("SELECT count(*) FROM pg_database WHERE datname LIKE 'steel_bench_%'")
        ).scalar_one()
    assert left == 0
