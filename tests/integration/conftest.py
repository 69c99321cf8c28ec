"""Fixtures shared by the integration tests, on top of the session's services (tests/conftest.py).

``db_url`` and ``engine`` give a test a database of its own; a module whose tests need it prepared
otherwise (seeded, migrated with an extra constraint) defines its own fixture of the same name.
The ``dashboard_*`` fixtures give a module one database seeded for the dashboard (dashboard_seed.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from running_server import running
from sqlalchemy import Engine

from stack.service import free_port
from stack.triton_server import TritonServer
from steelcore.postgres import migrate
from steelcore.postgres.engine import DASHBOARD_ROLE, FEEDBACK_ROLE, create_db_engine, role_url
from steelcore.postgres.frame_records import FrameRecord
from steelcore.postgres.scratch import scratch_database
from steelcore.settings import Settings

TRITON_START_TIMEOUT_S = 300.0  # loading every model of the repository on two shared cores


@pytest.fixture()
def db_url(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database on the session's server (named after the test module), dropped afterwards."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    with scratch_database(postgres_url, f"steel_{module}") as url:
        yield url


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    """The test's database migrated to head, as its owner."""
    migrate.upgrade(db_url)
    eng = create_db_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture()
def line_settings(stack_settings: Settings, kafka_url: str, redis_url: str, db_url: str) -> Settings:
    """Settings of a line of the test's own on the session's Kafka and Redis: topics (two partitions,
    no rotation), consumer group and Redis streams named with a random tag, so tests never read each
    other's frames or alarms, and the test's database (``db_url``)."""
    tag = uuid.uuid4().hex[:10]
    return stack_settings.model_copy(
        update={
            "frames_topic": f"frames-{tag}",
            "truth_topic": f"truth-{tag}",
            "dead_letter_topic": f"dlq-{tag}",
            "consumer_group": f"workers-{tag}",
            "alarm_stream": f"steel:alarms:{tag}",
            "alarm_channel": f"steel:alarms:live:{tag}",
            "inspection_alarm_stream": f"steel:inspection:{tag}",
            "frames_partitions": 2,
            "topic_rotation_s": 0,
            "postgres_url": db_url,
        }
    )


@pytest.fixture(scope="module")
def triton(stack_run_dir: Path) -> Iterator[TritonServer]:
    """Triton serving the committed repository (``settings.triton_repository``) from a copy of the
    module's own, which the module's tests may change (`steel models` does)."""
    repository = Settings().triton_repository
    run_dir = stack_run_dir / f"triton-{uuid.uuid4().hex[:6]}"
    server = TritonServer(run_dir, repository, free_port(), free_port(), free_port())
    yield from running(server, TRITON_START_TIMEOUT_S, f"Triton serving {repository}")


@pytest.fixture(scope="module")
def dashboard_db_url(postgres_url: str) -> Iterator[str]:
    """A migrated database with the dashboard's roles, one per module."""
    from dashboard_seed import new_database

    with new_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="module")
def dashboard_owner(dashboard_db_url: str) -> Iterator[Engine]:
    """The dashboard's database as its owner (seeds it, reads what the pages wrote)."""
    engine = create_db_engine(dashboard_db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def seeded_records(dashboard_owner: Engine) -> list[FrameRecord]:
    """dashboard_seed's frames, stored once per module with times ending now."""
    from dashboard_seed import seed

    return seed(dashboard_owner, datetime.now(UTC))


@pytest.fixture()
def dashboard_env(
    dashboard_db_url: str,
    seeded_records: list[FrameRecord],
    stack_run_dir: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app's settings on the seeded database, as `steel dashboard` would hand them over: role
    URLs, no login, the session's services for the health page."""
    monkeypatch.setenv("STEEL_DASHBOARD_DB_URL", role_url(dashboard_db_url, DASHBOARD_ROLE))
    monkeypatch.setenv("STEEL_DASHBOARD_FEEDBACK_DB_URL", role_url(dashboard_db_url, FEEDBACK_ROLE))
    monkeypatch.setenv("STEEL_DASHBOARD_AUTH", "off")
    monkeypatch.setenv("STEEL_RUN_DIR", str(stack_run_dir))
    for name in ("STEEL_POSTGRES_URL", "STEEL_REDIS_URL", "STEEL_KAFKA_URL", "STEEL_TRITON_URL"):
        monkeypatch.delenv(name, raising=False)
