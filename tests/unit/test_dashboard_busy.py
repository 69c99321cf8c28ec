"""A dashboard page whose database pool is exhausted says the database is busy instead of
showing a traceback (dashboard/ui.py database_errors)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from dashboard import ui


class _Stop(Exception):
    pass


class _FakeStreamlit:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        self.errors.append(text)

    def stop(self) -> None:
        raise _Stop


def test_a_pool_timeout_is_shown_as_a_busy_database(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeStreamlit()
    monkeypatch.setattr(ui, "st", fake)
    with pytest.raises(_Stop), ui.database_errors():
        raise PoolTimeoutError("QueuePool limit of size 4 overflow 4 reached, connection timed out")
    assert len(fake.errors) == 1 and "busy" in fake.errors[0]
