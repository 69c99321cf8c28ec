"""The worker's /livez and /readyz, asked over HTTP on the metrics port as a kubelet would."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fake_clock import FakeClock
from worker_fakes import good_messages, make_worker

from stack.service import free_port
from workers.worker_errors import BatchAbandonedError
from workers.worker_metrics import WorkerMetrics
from workers.worker_probes import WorkerProbes


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextmanager
def served(metrics: WorkerMetrics, probes: WorkerProbes) -> Iterator[int]:
    port = free_port()
    metrics.serve(port, probes=probes)
    try:
        yield port
    finally:
        metrics.close()


def test_livez_turns_503_once_the_heartbeat_is_older_than_the_timeout() -> None:
    clock = FakeClock()
    probes = WorkerProbes(60.0, clock=clock)
    with served(WorkerMetrics(), probes) as port:
        assert get(port, "/livez") == (200, "ok\n")
        clock.now += 61  # the loop stuck in one call for 61 s
        status, body = get(port, "/livez")
        assert status == 503 and "no progress for 61 s" in body
        probes.beat()
        assert get(port, "/livez")[0] == 200
        # /metrics is still served on the same port.
        status, body = get(port, "/metrics")
        assert status == 200 and "steel_worker_frames_total" in body


def test_a_worker_stuck_in_consume_fails_liveness_and_one_held_by_an_outage_does_not() -> None:
    worker, _journal, parts = make_worker(good_messages(2), infer_failures=10**6)
    worker.probes.liveness_timeout_s = 0.3
    consumer = parts["consumer"]
    release = threading.Event()
    real_consume = consumer.consume
    stuck = {"on": False}

    def consume(num_messages: int, timeout: float) -> list[Any]:
        if stuck["on"]:
            release.wait(10)  # a call that never returns (a hung client library)
        return real_consume(num_messages, timeout)

    consumer.consume = consume
    with served(worker.metrics, worker.probes) as port:
        # Held by a Triton outage for longer than the timeout: the loop keeps polling, so it is alive.
        ended: list[BaseException] = []

        def run() -> None:
            try:
                worker.run_once()
            except BatchAbandonedError as exc:  # the stop below, with the outage still on
                ended.append(exc)

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert get(port, "/livez")[0] == 200
            time.sleep(0.05)
        stuck["on"] = True  # the next poll hangs
        time.sleep(0.6)
        status, body = get(port, "/livez")
        assert status == 503 and "no progress" in body
        release.set()
        worker.stop_event.set()
        runner.join(5)
        assert not runner.is_alive() and ended


def test_readyz_is_503_with_a_reason_until_the_partitions_are_assigned() -> None:
    worker, _journal, parts = make_worker(good_messages(1))
    worker.probes.cache_s = 0  # ask on every probe in this test
    consumer = parts["consumer"]
    with served(worker.metrics, worker.probes) as port:
        status, body = get(port, "/readyz")
        assert status == 503 and body == "kafka: no partition assignment yet\n"
        consumer.callbacks["on_assign"](consumer, consumer.assignment())
        assert get(port, "/readyz") == (200, "ok\n")
        consumer.callbacks["on_revoke"](consumer, consumer.assignment())
        assert get(port, "/readyz")[0] == 503
        consumer.callbacks["on_assign"](consumer, consumer.assignment())
        parts["inference"].ready = lambda: False  # Triton up, model unloaded
        status, body = get(port, "/readyz")
        assert status == 503 and "triton: model 'steel_ensemble' not ready" in body
        del parts["inference"].ready
        worker.stop_event.set()
        assert get(port, "/readyz") == (503, "worker: stopping\n")


def test_readiness_is_cached_and_a_failing_check_is_a_reason_not_an_error() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def flaky() -> str | None:
        calls.append(1)
        raise ConnectionRefusedError("connection refused")

    probes = WorkerProbes(60.0, [("database", flaky)], cache_s=2.0, clock=clock)
    assert probes.ready() == (False, "database: check failed: ConnectionRefusedError: connection refused")
    probes.ready()
    assert len(calls) == 1  # within the cache period: not asked again
    clock.now += 2.5
    probes.ready()
    assert len(calls) == 2


def test_liveness_timeout_is_a_setting_with_a_default_of_60_s(monkeypatch: pytest.MonkeyPatch) -> None:
    from steelcore.settings import Settings

    assert Settings().worker_liveness_timeout_s == 60.0
    monkeypatch.setenv("STEEL_WORKER_LIVENESS_TIMEOUT_S", "5")
    worker, _journal, _parts = make_worker([])
    assert worker.probes.liveness_timeout_s == 5.0


def test_readiness_checks_run_on_one_thread_and_a_hanging_one_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import workers.worker_probes as probes_module

    threads: set[int] = set()
    hang = threading.Event()

    def check() -> str | None:
        threads.add(threading.get_ident())
        if hang.is_set():
            time.sleep(1.0)
        return None

    probes = WorkerProbes(60.0, [("triton", check)], cache_s=0)
    for _ in range(3):  # asked from three threads, as the HTTP server does
        runner = threading.Thread(target=probes.ready)
        runner.start()
        runner.join()
    assert len(threads) == 1 and threading.get_ident() not in threads
    monkeypatch.setattr(probes_module, "CHECK_TIMEOUT_S", 0.2)
    hang.set()
    assert probes.ready() == (False, "readiness checks did not answer within 0.2 s")
    probes.close()
