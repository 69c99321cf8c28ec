"""The daemon life every embedded service shares, exercised with a tiny stand-in process.

The stand-in is Python's http.server, so no wheel-shipped binary is needed: these are unit tests
of pidfiles, health waits, bind retries and stops.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from stack.processes import PidRecord
from stack.service import EmbeddedService, free_port, port_accepts
from stack.service_errors import AddressInUseError, ServiceStartError, retry_on_address_in_use
from steelcore.service_health import Health


class HttpService(EmbeddedService):
    name = "fake"
    stop_timeout_s = 5.0
    bind_retry_attempts = 2
    bind_retry_first_delay_s = 0.05

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", self.host, str(self.port)]

    def probe(self, timeout_s: float = 2.0) -> str | None:
        import urllib.request

        with urllib.request.urlopen(self.url, timeout=timeout_s) as response:
            return response.headers.get("Server")


class CrashingService(HttpService):
    message = "fatal: cannot open data folder"

    def command(self) -> list[str]:
        return [sys.executable, "-c", f"import sys; print({self.message!r}); sys.exit(1)"]


class BindFailingService(CrashingService):
    message = "bind: Address already in use"


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[HttpService]:
    svc = HttpService(tmp_path, free_port())
    yield svc
    svc.stop()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_start_runs_a_healthy_daemon_in_its_own_session(service: HttpService) -> None:
    service.start(timeout_s=20)
    proc = service.process()
    assert proc is not None
    assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
    health = service.health()
    assert health.up and health.pid == proc.pid
    assert health.version and "SimpleHTTP" in health.version
    assert health.rss_bytes and health.rss_bytes > 1_000_000


def test_a_second_handle_finds_and_stops_the_daemon(service: HttpService) -> None:
    service.start(timeout_s=20)
    pid = service.process().pid  # type: ignore[union-attr]
    other = HttpService(service.run_dir, service.port)  # as `steel down` in another process sees it
    assert other.process() is not None
    assert other.stop() is True
    assert gone(pid)
    assert not other.pidfile.exists()
    assert not port_accepts(service.host, service.port)
    assert other.stop() is False


def test_start_twice_adopts_the_running_daemon(service: HttpService) -> None:
    service.start(timeout_s=20)
    pid = service.process().pid  # type: ignore[union-attr]
    HttpService(service.run_dir, service.port).start(timeout_s=20)
    assert service.process().pid == pid  # type: ignore[union-attr]


def test_stale_pidfile_is_recognised_and_removed(tmp_path: Path) -> None:
    svc = HttpService(tmp_path, free_port())
    svc.service_dir.mkdir(parents=True)
    svc.pidfile.write_text('{"pid": 999999, "create_time": 1.0}')
    assert svc.process() is None
    assert svc.health().up is False
    assert svc.remove_stale_pidfile() is True
    assert not svc.pidfile.exists()


def test_recycled_pid_is_not_mistaken_for_the_service(tmp_path: Path) -> None:
    # Our own pid with another start time: the pid exists, but it is not the recorded process.
    me = PidRecord.of(os.getpid())
    assert me.process() is not None
    assert PidRecord(me.pid, me.create_time - 3600).process() is None


def test_process_that_exits_fails_start_with_its_log(tmp_path: Path) -> None:
    svc = CrashingService(tmp_path, free_port())
    with pytest.raises(ServiceStartError) as exc:
        svc.start(timeout_s=20)
    assert not isinstance(exc.value, AddressInUseError)
    assert "cannot open data folder" in str(exc.value)
    assert str(svc.log_path) in str(exc.value)
    assert not svc.pidfile.exists()


def test_address_in_use_is_retried_then_reported(tmp_path: Path) -> None:
    svc = BindFailingService(tmp_path, free_port())
    with pytest.raises(AddressInUseError):
        svc.start(timeout_s=20)
    assert svc.log_path.read_text().count("Address already in use") == svc.bind_retry_attempts


def test_port_taken_by_another_program_is_reported(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        svc = HttpService(tmp_path, squatter.getsockname()[1])
        with pytest.raises(AddressInUseError, match="in use"):
            svc.start(timeout_s=5)
    assert svc.process() is None


def test_retry_succeeds_once_the_address_frees() -> None:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise AddressInUseError("fake", "bind failed", None)
        return "bound"

    assert retry_on_address_in_use(attempt, attempts=3, first_delay_s=0.01) == "bound"
    assert len(calls) == 3


def test_health_redacts_passwords() -> None:
    health = Health("redis", up=True, url="redis://:hunter2@127.0.0.1:6380/0")
    assert "hunter2" not in repr(health)
    assert "hunter2" not in str(health.to_json())
