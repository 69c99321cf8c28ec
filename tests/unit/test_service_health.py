"""steelcore.service_health: the status the dashboard shows, without starting or importing the stack."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import SecretStr

from stack.service import free_port
from steelcore.service_health import service_status
from steelcore.service_urls import write_stack
from steelcore.settings import Settings


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there: a connection is refused at once
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_embedded_services_not_recorded_are_not_started(tmp_path: Path) -> None:
    status = service_status(Settings(run_dir=tmp_path))
    assert [h.name for h in status] == ["kafka", "postgres", "redis", "triton"]
    assert all(not h.up and h.embedded and h.detail == "not started" for h in status)


def test_an_external_service_that_refuses_is_down_with_the_reason(tmp_path: Path) -> None:
    url = f"redis://:secret@127.0.0.1:{_closed_port()}/0"
    settings = Settings(run_dir=tmp_path, redis_url=SecretStr(url))
    redis = next(h for h in service_status(settings, timeout_s=1.0) if h.name == "redis")
    assert not redis.up and not redis.embedded
    assert "ConnectionError" in redis.detail
    assert redis.url is not None and "secret" not in redis.url  # redacted: Health may be shown


def test_a_recorded_embedded_service_is_probed_at_its_recorded_url(tmp_path: Path) -> None:
    port = _closed_port()
    write_stack(tmp_path, {"redis": {"url": f"redis://127.0.0.1:{port}/0", "pid": 4242}})
    redis = next(h for h in service_status(Settings(run_dir=tmp_path), timeout_s=1.0) if h.name == "redis")
    assert not redis.up and redis.embedded and redis.pid == 4242
    assert redis.url == f"redis://127.0.0.1:{port}/0"
