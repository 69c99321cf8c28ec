"""Credentials in settings never print, and never travel on a command line.

Every setting that can hold a password (the database and Redis URLs, the dashboard's two database
URLs, every *_password) is a SecretStr: its repr, str and JSON dump show '**********'; the code
that connects asks steelcore.settings.reveal. The maintenance commands (migrate, roles, image
purge) read the database URL from the environment and refuse one with a password in argv.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from dashboard import prepare_database
from dashboard.config import DashboardSettings
from steelcore import exit_codes
from steelcore.postgres import frame_images, migrate
from steelcore.postgres.engine import cli_database_url, feedback_url, reader_url, url_password
from steelcore.service_urls import postgres_url, redis_url
from steelcore.settings import Settings, reveal

PASSWORD = "pw-Xq81-never-shown"
URL_SETTINGS = {
    "postgres_url": f"postgresql+psycopg://steel:{PASSWORD}@db:5432/steel",
    "redis_url": f"redis://:{PASSWORD}@redis:6379/0",
    "dashboard_db_url": f"postgresql+psycopg://steel_dashboard:{PASSWORD}@db:5432/steel",
    "dashboard_feedback_db_url": f"postgresql+psycopg://steel_feedback:{PASSWORD}@db:5432/steel",
}


def _credential_fields() -> list[str]:
    return [
        name for name in DashboardSettings.model_fields if name.endswith("_password") or name in URL_SETTINGS
    ]


def test_every_credential_setting_is_a_secret() -> None:
    fields = _credential_fields()
    assert set(URL_SETTINGS) <= set(fields) and "kafka_sasl_password" in fields
    values = {name: URL_SETTINGS.get(name, PASSWORD) for name in fields}
    settings = Settings(run_dir=Path("/nonexistent"), **values)
    for name in fields:
        assert isinstance(getattr(settings, name), SecretStr), name
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert PASSWORD not in shown


def test_the_code_that_connects_gets_the_plain_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in URL_SETTINGS.items():
        monkeypatch.setenv(f"STEEL_{name.upper()}", value)
    settings = DashboardSettings()
    assert postgres_url(settings) == URL_SETTINGS["postgres_url"]
    assert redis_url(settings) == URL_SETTINGS["redis_url"]
    assert reader_url(settings) == URL_SETTINGS["dashboard_db_url"]
    assert feedback_url(settings) == URL_SETTINGS["dashboard_feedback_db_url"]
    # model_copy(update=...) does not validate: a plain str there still works.
    assert (
        postgres_url(settings.model_copy(update={"postgres_url": "postgresql://u@h/d"}))
        == "postgresql://u@h/d"
    )
    assert reveal(None) is None


@pytest.mark.parametrize(
    "main",
    [
        lambda url: migrate.main(["upgrade", url]),
        lambda url: migrate.main(["roles", url]),
        lambda url: prepare_database.main(["roles", url]),
        lambda url: frame_images.main(["purge", url, "--days", "1"]),
    ],
    ids=["migrate", "writer-roles", "dashboard-roles", "purge"],
)
def test_maintenance_commands_refuse_a_password_in_their_arguments(
    main, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(URL_SETTINGS["postgres_url"]) == exit_codes.USAGE
    err = capsys.readouterr().err
    assert "STEEL_POSTGRES_URL" in err and PASSWORD not in err


def test_maintenance_commands_take_the_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEEL_POSTGRES_URL", URL_SETTINGS["postgres_url"])
    from steelcore.settings import get_settings

    get_settings.cache_clear()
    try:
        assert cli_database_url(None) == URL_SETTINGS["postgres_url"]
    finally:
        get_settings.cache_clear()
    # A URL without a password (local trust or peer authentication) may still be given.
    assert cli_database_url("postgresql://postgres@/steel") == "postgresql://postgres@/steel"


def test_the_dashboard_logins_take_their_passwords_from_their_configured_urls() -> None:
    settings = DashboardSettings(**URL_SETTINGS)
    password = url_password(settings.dashboard_db_url)
    assert password is not None and password.get_secret_value() == PASSWORD
    assert url_password(SecretStr("postgresql://steel_feedback@db/steel")) is None
    assert url_password(None) is None


def test_the_stack_treats_a_secret_url_as_an_external_service(tmp_path: Path) -> None:
    from stack.embedded_stack import EmbeddedStack

    settings = Settings(run_dir=tmp_path, postgres_url=URL_SETTINGS["postgres_url"], redis_url=None)
    stack = EmbeddedStack(settings, include_triton=False)
    assert stack.external_url("postgres") == URL_SETTINGS["postgres_url"]
    assert stack.external_url("redis") is None
