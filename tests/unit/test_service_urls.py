"""URL resolution: settings first, then the embedded stack's record, else a clear error."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from steelcore.service_urls import (
    ServiceUnavailableError,
    is_embedded,
    kafka_bootstrap,
    libpq_url,
    postgres_dsn,
    read_stack,
    redis_url,
    resolve_url,
    stack_file,
    triton_url,
    write_stack,
)
from steelcore.settings import Settings

RECORD = {
    "kafka": {"url": "127.0.0.1:19092", "port": 19092},
    "postgres": {"url": "postgresql+psycopg://postgres@127.0.0.1:15433/postgres", "port": 15433},
    "redis": {"url": "redis://:s3cret@127.0.0.1:16380/0", "port": 16380},
    "triton": {"url": "127.0.0.1:18001", "grpc_url": "127.0.0.1:18001", "http_url": "127.0.0.1:18000"},
}


def embedded_settings(run_dir: Path, **overrides: object) -> Settings:
    fields: dict[str, object] = {
        "run_dir": run_dir,
        "kafka_url": None,
        "postgres_url": None,
        "redis_url": None,
        "triton_url": None,
    }
    fields.update(overrides)
    return Settings(**fields)


def test_embedded_urls_come_from_the_stack_record(tmp_path: Path) -> None:
    write_stack(tmp_path, RECORD)
    settings = embedded_settings(tmp_path)
    assert kafka_bootstrap(settings) == "127.0.0.1:19092"
    assert resolve_url("postgres", settings) == "postgresql+psycopg://postgres@127.0.0.1:15433/postgres"
    assert redis_url(settings) == "redis://:s3cret@127.0.0.1:16380/0"
    assert all(is_embedded(name, settings) for name in ("kafka", "postgres", "redis", "triton"))


def test_settings_url_wins_over_the_stack_record(tmp_path: Path) -> None:
    write_stack(tmp_path, RECORD)
    settings = embedded_settings(
        tmp_path, kafka_url="kafka-1:9092,kafka-2:9092", redis_url="redis://r:6379/1"
    )
    assert kafka_bootstrap(settings) == "kafka-1:9092,kafka-2:9092"
    assert redis_url(settings) == "redis://r:6379/1"
    assert not is_embedded("kafka", settings)
    assert is_embedded("postgres", settings)


def test_settings_url_needs_no_stack_record(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path / "absent", postgres_url="postgresql+psycopg://u:p@db:5432/steel")
    assert postgres_dsn(settings) == "postgresql://u:p@db:5432/steel"


def test_blank_settings_url_counts_as_unset(tmp_path: Path) -> None:
    write_stack(tmp_path, RECORD)
    settings = embedded_settings(tmp_path, kafka_url="  ")
    assert is_embedded("kafka", settings)
    assert kafka_bootstrap(settings) == "127.0.0.1:19092"


@pytest.mark.parametrize(("protocol", "expected"), [("grpc", "127.0.0.1:18001"), ("http", "127.0.0.1:18000")])
def test_triton_url_follows_the_protocol(tmp_path: Path, protocol: str, expected: str) -> None:
    write_stack(tmp_path, RECORD)
    assert triton_url(embedded_settings(tmp_path, triton_protocol=protocol)) == expected


def test_neither_set_nor_started_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailableError) as exc:
        kafka_bootstrap(embedded_settings(tmp_path))
    message = str(exc.value)
    assert "STEEL_KAFKA_URL" in message
    assert "steel up" in message
    assert str(stack_file(tmp_path)) in message


def test_service_missing_from_the_record_is_a_clear_error(tmp_path: Path) -> None:
    write_stack(tmp_path, {"kafka": RECORD["kafka"]})
    with pytest.raises(ServiceUnavailableError, match="STEEL_TRITON_URL"):
        triton_url(embedded_settings(tmp_path))


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"services": 3}'])
def test_damaged_stack_record_is_reported(tmp_path: Path, content: str) -> None:
    stack_file(tmp_path).write_text(content)
    with pytest.raises(ServiceUnavailableError, match="steel down"):
        read_stack(tmp_path)


def test_unknown_service_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown service 'mqtt'"):
        resolve_url("mqtt", embedded_settings(tmp_path))  # type: ignore[arg-type]


def test_stack_record_round_trips_and_is_private(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "run", RECORD)
    assert read_stack(tmp_path / "run") == RECORD
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://postgres@127.0.0.1:5433/postgres",
            "postgresql://postgres@127.0.0.1:5433/postgres",
        ),
        ("postgresql://u:p@h/db?sslmode=require", "postgresql://u:p@h/db?sslmode=require"),
    ],
)
def test_libpq_url_drops_the_driver(url: str, expected: str) -> None:
    assert libpq_url(url) == expected


def test_libpq_url_rejects_a_non_url() -> None:
    with pytest.raises(ValueError, match="not a URL"):
        libpq_url("localhost:5432")
