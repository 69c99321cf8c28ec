"""`steel bench rle` end to end with a tiny repeat count (no speed assertions: they live in the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cli as bench_cli
from benchmarks import report
from benchmarks.rle_bench import blob_mask, kaggle_decode, kaggle_encode
from steelcore import exit_codes
from steelcore.cli import main
from steelcore.severstal import FRAME_SHAPE


def test_steel_bench_rle_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rle.json"
    code = main(["bench", "rle", "--repeats", "2", "--warmup", "0", "--real", "3", "--json", str(out)])
    assert code == exit_codes.OK
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "rle"
    assert payload["machine"]["numpy"] == np.__version__
    cases = {r["case"]: r for r in payload["results"]}
    for area in ("0%", "1%", "10%", "50%"):
        assert f"blobs {area}" in cases
    for result in payload["results"]:
        assert result["outputs_agree"] is True
        for op in ("encode", "decode"):
            assert result[op]["ratio"] > 0
            assert result[op]["ours"]["median_us"] > 0
            assert result[op]["ours"]["p95_us"] >= result[op]["ours"]["median_us"]
    # The blobs really cover about the requested share of the frame.
    assert cases["blobs 0%"]["area_fraction"] == 0
    for name, target in (("blobs 1%", 0.01), ("blobs 10%", 0.10), ("blobs 50%", 0.50)):
        assert target <= cases[name]["area_fraction"] < target * 1.5
    assert out.with_suffix(".png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "blobs 50%" in printed and "enc x" in printed


def test_baseline_is_a_real_rle_implementation() -> None:
    mask = blob_mask(0.05, np.random.default_rng(3))
    text = kaggle_encode(mask)
    assert text.split()[1] != "0"
    np.testing.assert_array_equal(kaggle_decode(text), mask)
    assert kaggle_decode(text).shape == FRAME_SHAPE


def test_missing_benchmark_module_is_a_clear_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(bench_cli.BENCHMARKS, "nosuch", "a benchmark nobody wrote")
    assert main(["bench", "nosuch"]) == exit_codes.FAILURE
    assert "not implemented yet" in capsys.readouterr().err


def test_bad_benchmark_options_are_bad_input(tmp_path: Path) -> None:
    assert (
        main(["bench", "rle", "--repeats", "0", "--json", str(tmp_path / "x.json")]) == exit_codes.BAD_INPUT
    )


def test_time_callable_and_table() -> None:
    calls = []
    timing = report.time_callable(lambda: calls.append(1), warmup=2, repeats=5, number=3)
    assert len(calls) == 2 + 5 * 3
    assert 0 < timing.min_us <= timing.median_us <= timing.p95_us
    assert timing.per_item(4).median_us == pytest.approx(timing.median_us / 4)
    table = report.format_table(["case", "us"], [["a", 1.5], ["longer", 1234.0]]).splitlines()
    assert table[0].startswith("case") and len({len(line) for line in table}) == 1  # aligned
    assert table[3].endswith("1,234")
    with pytest.raises(ValueError, match="repeats"):
        report.time_callable(lambda: None, repeats=0)


def test_bench_without_a_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == exit_codes.USAGE
    assert "rle" in capsys.readouterr().err
