"""PeriodicThread's timing: a plain interval, or wall-clock multiples shared by several processes."""

from __future__ import annotations

import threading

import pytest

from workers.periodic_thread import PeriodicThread


def test_a_plain_thread_waits_its_interval_whatever_the_clock() -> None:
    thread = PeriodicThread("t", lambda: None, 10.0, clock=lambda: 1_000_003.7)
    assert thread.next_wait_s() == 10.0


@pytest.mark.parametrize(
    ("now", "wait"),
    [(1_000_000.0, 10.0), (1_000_003.5, 6.5), (1_000_009.9, 0.1), (1_000_017.0, 3.0)],
)
def test_on_clock_multiples_waits_for_the_next_multiple(now: float, wait: float) -> None:
    thread = PeriodicThread("t", lambda: None, 10.0, on_clock_multiples=True, clock=lambda: now)
    assert thread.next_wait_s() == pytest.approx(wait)


def test_two_workers_started_apart_step_at_the_same_instants() -> None:
    # Worker B starts 7.3 s after worker A; both janitors' next steps fall on the same instants.
    now = [500.0]
    a = PeriodicThread("a", lambda: None, 10.0, on_clock_multiples=True, clock=lambda: now[0])
    b = PeriodicThread("b", lambda: None, 10.0, on_clock_multiples=True, clock=lambda: now[0] + 7.3)
    a_due = now[0] + a.next_wait_s()
    b_due = now[0] + 7.3 + b.next_wait_s()
    assert a_due == pytest.approx(510.0) and b_due == pytest.approx(510.0)


def test_steps_run_in_the_background_until_stopped() -> None:
    stepped = threading.Event()
    thread = PeriodicThread("t", stepped.set, 0.01, on_clock_multiples=True)
    thread.start()
    try:
        assert stepped.wait(2.0)
    finally:
        thread.stop(timeout_s=2.0)
    assert not thread._thread.is_alive()


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        PeriodicThread("t", lambda: None, 0.0)
