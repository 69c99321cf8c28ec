"""`steel query` argument handling and exit codes that need no database."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from steelcore import exit_codes
from steelcore.cli import main
from steelcore.postgres.defect_history import DEFAULT_LIMIT
from workers import query_cli


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    query_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_iso_times_without_offset_are_utc_and_offsets_are_kept() -> None:
    args = _args("--from", "2025-01-31T08:00", "--to", "2025-01-31T10:00:00+02:00")
    assert args.time_from == datetime(2025, 1, 31, 8, 0, tzinfo=UTC)
    assert args.time_to.utcoffset() == timedelta(hours=2)
    assert args.time_to == datetime(2025, 1, 31, 8, 0, tzinfo=UTC)  # the same instant


def test_defaults_and_repeated_classes() -> None:
    args = _args("--class", "1", "3")
    assert args.class_ids == [1, 3]
    assert args.limit == DEFAULT_LIMIT and args.format == "table" and args.out is None


def test_a_malformed_time_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["query", "--from", "yesterday"])
    assert exc.value.code == exit_codes.USAGE


@pytest.mark.parametrize(
    "argv",
    [
        ["--from", "2025-02-01", "--to", "2025-01-01"],
        ["--class", "0"],
        ["--limit", "-5"],
        ["--min-severity", "2"],
    ],
)
def test_inconsistent_filters_are_bad_input(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert query_cli.run(_args(*argv, "--db-url", "postgresql://u@127.0.0.1:1/x")) == exit_codes.BAD_INPUT
    assert capsys.readouterr().err.startswith("steel query: ")


def test_an_unreachable_database_is_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback refuses at once: no server needed to test the failure path.
    code = query_cli.run(_args("--db-url", "postgresql://reader:s3cret@127.0.0.1:1/steel"))
    assert code == exit_codes.UNAVAILABLE
    err = capsys.readouterr().err
    assert "cannot reach the defect database" in err
    assert "s3cret" not in err


def test_no_configured_or_embedded_database_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from steelcore.settings import Settings

    monkeypatch.setattr("steelcore.service_urls.get_settings", lambda: Settings(run_dir=tmp_path))
    monkeypatch.delenv("STEEL_POSTGRES_URL", raising=False)
    assert query_cli.run(_args()) == exit_codes.UNAVAILABLE
    assert "steel up" in capsys.readouterr().err
